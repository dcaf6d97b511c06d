/*!
One delivery attempt of one entry, from `active/` to its next place.

1. Recipients still pending are sent in transactions of at most
   `max_rcpt_per_transaction`; when there is more than one transaction, the
   state is written durably after each, so a crash re-sends only the
   transaction that was in flight.
2. Then the entry leaves `active/`: removed when every recipient is done
   and none failed; to `failed/` (with its state) when every recipient is
   done and some failed; to `deferred/` with its next attempt otherwise. The
   state is always written before the rename.
*/
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::unistd::{Uid, User};
use outq_spool::address::Mailbox;
use outq_spool::log::escape;

use super::schedule;
use crate::bounce;
use crate::date;
use crate::deliver::{Outgoing, Status, Transport};
use crate::logging;
use crate::queue::state::{RcptStatus, State, one_line};
use crate::queue::store::{Queue, Request, Store, now};
use crate::queue::validate::Loaded;
use crate::runner::Settings;

/// Where an entry ended after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    Deferred,
    Failed,
    /// The attempt could not even record its result; the entry stays in
    /// `active/` and is taken again at the next full queue run.
    Stuck,
}

/// How long a login name looked up for the Received header is reused: the
/// submitters of a queue are few, and one password-database lookup per
/// message (an open, read and close of /etc/passwd with the `files`
/// backend) was a good part of the runner's system calls. A renamed
/// account shows its new name after at most this long.
const LOGIN_TTL: Duration = Duration::from_secs(60);
/// Most names kept; beyond that the cache starts over.
const LOGIN_CACHE_MAX: usize = 256;

/// Names by uid, with when they were looked up (shared by the workers).
static LOGINS: Mutex<BTreeMap<u32, (String, Instant)>> = Mutex::new(BTreeMap::new());

fn login_of(uid: u32) -> String {
    let now = Instant::now();
    if let Ok(cache) = LOGINS.lock() {
        if let Some((name, at)) = cache.get(&uid) {
            if now.saturating_duration_since(*at) < LOGIN_TTL {
                return name.clone();
            }
        }
    }
    let name = match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => escape(u.name.as_bytes()),
        // Not kept: the next message asks again.
        _ => return "unknown".into(),
    };
    if let Ok(mut cache) = LOGINS.lock() {
        if cache.len() >= LOGIN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(uid, (name.clone(), now));
    }
    name
}

/// The trace header outq adds: who submitted it, from the file's owner.
pub fn received_header(entry: &Loaded, host: &str) -> String {
    format!(
        "Received: from userid {uid} ({login}) by {host} (outq) id {id}; {date}",
        uid = entry.owner,
        login = login_of(entry.owner),
        id = entry.id,
        date = date::rfc5322(now()),
    )
}

/// Make one attempt and move the entry on.
pub fn attempt(
    store: &Store,
    s: &Settings,
    transport: &mut dyn Transport,
    entry: &Loaded,
    mut state: State,
) -> Disposition {
    let id = entry.id.as_str();
    let header = &entry.parsed.header;
    let start = now();
    state.attempts = state.attempts.saturating_add(1);
    if schedule::expired(&s.runner, header.arrival, start) {
        for r in state.recipients.iter_mut().filter(|r| r.status == RcptStatus::Pending) {
            r.status = RcptStatus::Failed;
            r.reply = format!("{}: maximal_queue_lifetime reached", bounce::EXPIRED_PREFIX);
        }
        logging::info(&format!("{id}: expired after {}s in the queue", start.saturating_sub(header.arrival)));
        return finish(store, s, entry, state);
    }
    let received = received_header(entry, &s.host);
    let pending: Vec<Mailbox> = state.pending().map(|r| r.address.clone()).collect();
    let chunks: Vec<&[Mailbox]> = pending.chunks(s.runner.max_rcpt_per_transaction.max(1)).collect();
    let many = chunks.len() > 1;
    for chunk in chunks {
        let msg = Outgoing {
            id: &entry.id,
            sender: &header.sender,
            recipients: chunk,
            received: &received,
            entry: &entry.file,
            body_offset: entry.parsed.body_offset,
            size: header.size,
        };
        let outcomes = transport.deliver(&msg);
        for (addr, out) in chunk.iter().zip(outcomes.iter()) {
            let status = match out.status {
                Status::Sent => RcptStatus::Sent,
                Status::Deferred => RcptStatus::Pending,
                Status::Failed => RcptStatus::Failed,
            };
            if let Some(r) = state.recipients.iter_mut().find(|r| &r.address == addr && r.status == RcptStatus::Pending)
            {
                r.status = status;
                r.reply = one_line(&out.reply);
            }
            let word = match out.status {
                Status::Sent => "sent",
                Status::Deferred => "deferred",
                Status::Failed => "failed",
            };
            if out.status == Status::Deferred {
                state.last_error = one_line(&out.reply);
            }
            logging::info(&format!(
                "{id}: to=<{addr}>, relay={}, delay={}, attempts={}, status={word} ({})",
                escape(out.relay.as_bytes()),
                now().saturating_sub(header.arrival),
                state.attempts,
                one_line(&out.reply),
            ));
        }
        if outcomes.len() != chunk.len() {
            logging::warning(&format!(
                "{id}: transport returned {} results for {} recipients",
                outcomes.len(),
                chunk.len()
            ));
        }
        if many && state.pending().count() > 0 && store.write_state(id, &state).is_err() {
            logging::warning(&format!("{id}: cannot record delivery progress"));
        }
        if s.stopping() {
            break;
        }
    }
    finish(store, s, entry, state)
}

/// Move the entry out of `active/` according to its recipients.
fn finish(store: &Store, s: &Settings, entry: &Loaded, mut state: State) -> Disposition {
    let id = entry.id.as_str();
    match store.take_request(id) {
        Some(Request::Delete) => {
            if store.unlink_durably(Queue::Active, id).is_ok() {
                let _ = store.remove_state(id);
                logging::info(&format!("{id}: deleted by the operator after its attempt"));
                return Disposition::Delivered;
            }
            logging::warning(&format!("{id}: cannot delete as the operator asked"));
            return Disposition::Stuck;
        }
        Some(Request::Hold) if state.count(RcptStatus::Pending) > 0 => {
            state.hold = Some("held by the operator".into());
            state.next_attempt = now();
            if store.write_state(id, &state).is_ok() && store.rename_durably(Queue::Active, Queue::Hold, id).is_ok() {
                logging::info(&format!("{id}: held by the operator after its attempt"));
                return Disposition::Deferred;
            }
        }
        _ => {}
    }
    let pending = state.count(RcptStatus::Pending);
    let failed = state.count(RcptStatus::Failed);
    if pending == 0 && failed == 0 {
        return remove_delivered(store, id, &state);
    }
    let (to, disposition) = if pending == 0 {
        state.next_attempt = now();
        if let Err(e) = bounce::queue_failure_notice(store, s, entry, &state) {
            logging::warning(&format!("{id}: cannot queue the sender notification: {e}"));
        }
        (Queue::Failed, Disposition::Failed)
    } else {
        let age = now().saturating_sub(entry.parsed.header.arrival);
        state.next_attempt = now().saturating_add(schedule::backoff(&s.runner, age));
        if let Err(e) = bounce::queue_delay_notice(store, s, entry, &mut state) {
            logging::warning(&format!("{id}: cannot queue the delay notification: {e}"));
        }
        (Queue::Deferred, Disposition::Deferred)
    };
    if let Err(e) = store.write_state(id, &state) {
        logging::warning(&format!("{id}: cannot write delivery state: {}", e.desc()));
        return Disposition::Stuck;
    }
    if let Err(e) = store.rename_durably(Queue::Active, to, id) {
        logging::warning(&format!("{id}: cannot move to {}/: {}", to.name(), e.desc()));
        return Disposition::Stuck;
    }
    if to == Queue::Failed {
        logging::info(&format!("{id}: moved to failed/ ({failed} recipient(s) failed)"));
    }
    disposition
}

/// Remove a delivered entry. The entry goes first; its state file goes
/// once the removal is durable, batched with other removals by the
/// runner's settling thread (see `Store::settle_delivered`). The duplicate
/// window is from the relay's acceptance to that `fsync`.
fn remove_delivered(store: &Store, id: &str, state: &State) -> Disposition {
    if let Err(e) = store.remove_delivered(id) {
        logging::warning(&format!("{id}: cannot remove delivered entry: {}", e.desc()));
        // The name may still be there: record that every recipient was
        // sent, so that taking it again sends nothing.
        let _ = store.write_state(id, state);
        return Disposition::Stuck;
    }
    Disposition::Delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_are_cached_for_a_while() {
        // A uid no account has: only the cache can give it a name.
        let uid = u32::MAX - 7;
        assert_eq!(login_of(uid), "unknown");
        LOGINS.lock().unwrap().insert(uid, ("cached".into(), Instant::now()));
        assert_eq!(login_of(uid), "cached");
        let old = Instant::now().checked_sub(LOGIN_TTL * 2).unwrap();
        LOGINS.lock().unwrap().insert(uid, ("cached".into(), old));
        assert_eq!(login_of(uid), "unknown", "an expired name is looked up again");
        assert_eq!(login_of(0), "root");
        assert_eq!(LOGINS.lock().unwrap().get(&0).map(|(n, _)| n.as_str()), Some("root"));
    }
}
