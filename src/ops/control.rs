/*!
`outq flush`, `hold`, `release`, `delete`, `requeue`: moving entries.

Every move is a rename inside the spool. An entry in `active/` is never
touched: a hold or delete of it is written as a request (`state/ID.request`)
that the runner carries out when the attempt ends. `flush` makes deferred
entries due and wakes a running runner by touching the `lock` file, which
the runner watches (no pid is read, no signal sent).
*/
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::time::Duration;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, futimens};
use nix::sys::time::TimeSpec;
use outq_spool::layout;
use outq_spool::log::escape;

use super::inventory::{self};
use crate::error::Error;
use crate::queue::state::{RcptStatus, State};
use crate::queue::store::{Moves, Queue, Request, Store, now};
use outq_spool::address::Mailbox;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Hold,
    Release,
    Delete,
    Requeue,
}

fn fail(id: &str, what: &str, e: nix::errno::Errno) -> Error {
    Error::new(format!("{}: cannot {what}: {}", escape(id.as_bytes()), e.desc()), "see 'outq list' and 'outq check'")
}

/// Wake a running runner: it watches the lock file's attributes.
pub fn wake_runner(store: &Store) {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if let Ok(fd) = openat(store.root_fd().as_fd(), layout::LOCK, flags, Mode::empty()) {
        let t = TimeSpec::new(i64::try_from(now()).unwrap_or(0), 0);
        let _ = futimens(fd.as_fd(), &t, &t);
    }
}

/// Make the given deferred entries (all when none given) due now.
pub fn flush(store: &Store, ids: &[String]) -> Result<usize, Error> {
    let targets: Vec<String> =
        if ids.is_empty() { store.list(Queue::Deferred).unwrap_or_default() } else { ids.to_vec() };
    let mut n = 0;
    for id in &targets {
        if inventory::locate(store, id) != Some(Queue::Deferred) {
            if !ids.is_empty() {
                return Err(Error::new(
                    format!("{} is not deferred", escape(id.as_bytes())),
                    "see 'outq list --state deferred'",
                ));
            }
            continue;
        }
        match store.set_due(id, now()) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => n += 1,
            Err(e) => return Err(fail(id, "make it due", e)),
        }
    }
    // Said done only once the new times are on disk.
    store.sync_states().map_err(|e| fail("state/", "flush the new times", e))?;
    wake_runner(store);
    Ok(n)
}

fn state_of(store: &Store, id: &str) -> Option<State> {
    store.read_state(id).ok().flatten()
}

/// Apply `action` to one entry; returns a line saying what happened.
pub fn apply(store: &Store, limits: &outq_spool::entry::Limits, id: &str, action: Action) -> Result<String, Error> {
    let shown = escape(id.as_bytes());
    let q = inventory::locate(store, id).ok_or_else(|| Error::new(format!("no entry {shown}"), "see 'outq list'"))?;
    if q == Queue::Active {
        let req = match action {
            Action::Hold => Request::Hold,
            Action::Delete => Request::Delete,
            _ => return Err(Error::new(format!("{shown} is being delivered"), "wait for the attempt to end")),
        };
        store.write_request(id, req).map_err(|e| fail(id, "record the request", e))?;
        return Ok(format!("{shown}: being delivered; {} when the attempt ends", req.word()));
    }
    match (action, q) {
        (Action::Hold, Queue::New | Queue::Deferred) => {
            // Move first: once the entry is in hold/, no runner touches it
            // or its state, so the state written next cannot race with
            // an attempt's (a stale copy would forget deliveries).
            store.rename_durably(q, Queue::Hold, id).map_err(|e| fail(id, "hold it", e))?;
            let mut st = match fresh(store, Queue::Hold, id, limits) {
                Some(recipients) => store.entry_state(id, &recipients),
                None => state_of(store, id).unwrap_or_else(|| State::fresh(&[])),
            };
            st.hold = Some("held by the operator".into());
            store.write_state(id, &st).map_err(|e| fail(id, "write its state", e))?;
            Ok(format!("{shown}: held"))
        }
        (Action::Release, Queue::Hold) => {
            // State first, while no runner looks at the entry.
            if let Some(mut st) = state_of(store, id) {
                st.hold = None;
                st.recoveries = 0;
                st.next_attempt = now();
                store.write_state(id, &st).map_err(|e| fail(id, "write its state", e))?;
            }
            store.rename_durably(Queue::Hold, Queue::Deferred, id).map_err(|e| fail(id, "release it", e))?;
            wake_runner(store);
            Ok(format!("{shown}: released"))
        }
        (Action::Requeue, Queue::Failed) => {
            if let Some(mut st) = state_of(store, id) {
                for r in st.recipients.iter_mut().filter(|r| r.status == RcptStatus::Failed) {
                    r.status = RcptStatus::Pending;
                }
                st.next_attempt = now();
                store.write_state(id, &st).map_err(|e| fail(id, "write its state", e))?;
            }
            store.rename_durably(Queue::Failed, Queue::Deferred, id).map_err(|e| fail(id, "requeue it", e))?;
            wake_runner(store);
            Ok(format!("{shown}: requeued (failed recipients will be tried again)"))
        }
        (Action::Requeue, Queue::Corrupt) => {
            let note = settle_corrupt_state(store, id).map_err(|e| fail(id, "clear its state", e))?;
            // Back through pickup, which validates it again.
            store.rename_durably(Queue::Corrupt, Queue::New, id).map_err(|e| fail(id, "requeue it", e))?;
            Ok(format!("{shown}: requeued for validation{note}"))
        }
        (Action::Delete, _) => {
            store.unlink_durably(q, id).map_err(|e| fail(id, "delete it", e))?;
            let _ = store.remove_state(id);
            crate::logging::info(&format!("{shown}: deleted by the operator from {}/", q.name()));
            Ok(format!("{shown}: deleted"))
        }
        (a, q) => Err(Error::new(
            format!("{shown} is in {}/; {} does not apply there", q.name(), word(a)),
            "hold: new or deferred; release: hold; requeue: failed or corrupt",
        )),
    }
}

/// The recipients of a valid entry.
fn fresh(store: &Store, q: Queue, id: &str, limits: &outq_spool::entry::Limits) -> Option<Vec<Mailbox>> {
    crate::queue::validate::load(store, q, id, limits).ok().map(|l| l.parsed.header.recipients)
}

/// Before a corrupt entry goes back to pickup: a state file that cannot
/// be read is removed (pickup starts afresh, every recipient pending; a
/// readable one keeps its delivery record, reconciled at pickup). Returns
/// a note for the operator.
fn settle_corrupt_state(store: &Store, id: &str) -> Result<String, nix::errno::Errno> {
    match store.read_state(id) {
        Ok(_) => Ok(String::new()),
        Err(why) => {
            store.remove_state(id)?;
            crate::logging::warning(&format!("{}: removed unreadable state ({why}) on requeue", escape(id.as_bytes())));
            Ok(format!(" (its unreadable state was removed: {why}; every recipient is pending)"))
        }
    }
}

fn word(a: Action) -> &'static str {
    match a {
        Action::Hold => "hold",
        Action::Release => "release",
        Action::Delete => "delete",
        Action::Requeue => "requeue",
    }
}

/// `outq delete --state S --older-than D`.
pub fn delete_older(store: &Store, q: Queue, older: Duration) -> Result<Vec<String>, Error> {
    if q == Queue::Active {
        return Err(Error::new("entries being delivered cannot be deleted in bulk", "name them one by one"));
    }
    let t = now();
    let mut done = Vec::new();
    let mut moves = Moves::new(store);
    for name in store.list(q).unwrap_or_default() {
        let arrival = outq_spool::queue_id::QueueId::parse(&name).map(|i| i.arrival_secs());
        let arrival = arrival
            .or_else(|| store.stat(q, &name).ok().map(|st| u64::try_from(st.st_mtime).unwrap_or(0)))
            .unwrap_or(t);
        if t.saturating_sub(arrival) > older.as_secs() && moves.unlink(q, &name).is_ok() {
            done.push(name);
        }
    }
    // Said done (and state removed) only once the removals are durable.
    moves.commit().map_err(|e| fail(q.name(), "make the deletions durable", e))?;
    for name in &done {
        let _ = store.remove_state(name);
        crate::logging::info(&format!("{}: deleted by the operator from {}/", escape(name.as_bytes()), q.name()));
    }
    Ok(done.iter().map(|n| escape(n.as_bytes())).collect())
}
