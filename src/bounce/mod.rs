/*!
Delivery status notifications (RFC 3464) to the envelope sender.

- [`queue_failure_notice`]: when an entry is given up (no recipient
  pending, some failed: permanently, or because `maximal_queue_lifetime`
  ran out), one notice per message, `Action: failed`, listing every failed
  recipient;
- [`queue_delay_notice`]: once per message, when it has waited
  `delay_warning_time` (default: never) and recipients are still pending,
  `Action: delayed`; the state's `warned` line makes it once.

A notice comes from `MAILER-DAEMON@myhostname` with the null envelope
sender, so a notice is never answered by another: a message whose sender is
null gets none. It is queued by the runner into `new/` in the helper's
entry format ([`spool`]) and delivered like any other message; its text is
built by [`report`].

Call both before the state is written and the entry renamed: a crash in
between sends the notice twice at worst, never not at all.
*/
#![forbid(unsafe_code)]

pub mod report;
pub mod spool;

use std::os::unix::fs::FileExt;

use outq_spool::address::{Mailbox, Sender};
use outq_spool::queue_id::QueueId;

use crate::logging;
use crate::queue::state::{Rcpt, RcptStatus, State};
use crate::queue::store::{Store, now};
use crate::queue::validate::Loaded;
use crate::runner::Settings;
use report::{Kind, Notice, Recipient};

/// Most bytes of the original header section attached to a notice.
pub const MAX_HEADERS: usize = 64 * 1024;

/// How the runner's reply for a recipient whose lifetime ran out begins
/// (`runner::attempt`); such recipients are reported with status 4.4.7.
pub const EXPIRED_PREFIX: &str = "message expired";

/// The header section of the message in `entry`: from the start of the
/// message up to the first empty line, at most [`MAX_HEADERS`] bytes and
/// only whole lines, with LF line ends.
pub fn original_headers(entry: &Loaded) -> Vec<u8> {
    let size = entry.parsed.header.size;
    let want = usize::try_from(size).unwrap_or(usize::MAX).min(MAX_HEADERS);
    let mut buf = vec![0u8; want];
    let mut got = 0usize;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match entry.file.read_at(rest, entry.parsed.body_offset.saturating_add(got as u64)) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    buf.truncate(got);
    header_section(&buf, got as u64 == size)
}

/// The header lines at the start of `data`; `complete` when `data` is the
/// whole message (a last line without a line end is then kept).
fn header_section(data: &[u8], complete: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().min(8192));
    let mut rest = data;
    loop {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or(&[]), rest.get(i + 1..).unwrap_or(&[])),
            None if complete => (rest, &[][..]),
            None => break,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
    out
}

/// A server's reply as it may appear in the notice: printable ASCII.
fn printable(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) { s.to_owned() } else { outq_spool::log::escape(s.as_bytes()) }
}

fn failed_recipient(r: &Rcpt, last_error: &str) -> Recipient {
    let reply = printable(&r.reply);
    if reply.starts_with(EXPIRED_PREFIX) {
        let last = printable(last_error);
        let reason = if last.is_empty() { reply } else { format!("{reply}; last error: {last}") };
        return Recipient {
            address: r.address.clone(),
            original: r.origin.clone(),
            status: "4.4.7".into(),
            diagnostic: (!last.is_empty()).then_some(last),
            reason,
        };
    }
    Recipient {
        address: r.address.clone(),
        original: r.origin.clone(),
        status: report::status_in(&reply, '5').unwrap_or_else(|| "5.0.0".into()),
        reason: if reply.is_empty() { "delivery failed".into() } else { reply.clone() },
        diagnostic: (!reply.is_empty()).then_some(reply),
    }
}

fn delayed_recipient(r: &Rcpt) -> Recipient {
    let reply = printable(&r.reply);
    Recipient {
        address: r.address.clone(),
        original: r.origin.clone(),
        status: report::status_in(&reply, '4').unwrap_or_else(|| "4.0.0".into()),
        reason: if reply.is_empty() { "not delivered yet".into() } else { reply.clone() },
        diagnostic: (!reply.is_empty()).then_some(reply),
    }
}

/// Build and queue one notice to `to`.
fn queue_notice(
    store: &Store,
    settings: &Settings,
    entry: &Loaded,
    to: &Mailbox,
    kind: Kind,
    recipients: Vec<Recipient>,
) -> Result<QueueId, String> {
    let headers = original_headers(entry);
    let t = now();
    let retry_until = (kind == Kind::Delay)
        .then(|| entry.parsed.header.arrival.saturating_add(settings.runner.maximal_queue_lifetime.as_secs()));
    let max = settings.limits.max_size;
    spool::enqueue(store, &settings.limits, to, |id| {
        let mut n = Notice {
            kind,
            host: &settings.host,
            to,
            id,
            original: &entry.id,
            arrival: entry.parsed.header.arrival,
            now: t,
            retry_until,
            recipients,
            headers: &headers,
        };
        let text = report::compose(&n);
        if text.len() as u64 <= max {
            return text;
        }
        // A small message_size_limit: the headers are what can go.
        n.headers = &[];
        report::compose(&n)
    })
}

/// Queue the failure notice for `entry` whose delivery is over (`state`
/// has no recipient pending). `Ok(None)` when none is due: no recipient
/// failed, some are still pending, or the sender is null (logged).
/// Logs `ID: sender notification: NOTICEID` when one is queued.
pub fn queue_failure_notice(
    store: &Store,
    settings: &Settings,
    entry: &Loaded,
    state: &State,
) -> Result<Option<QueueId>, String> {
    let id = &entry.id;
    if state.count(RcptStatus::Pending) > 0 || state.count(RcptStatus::Failed) == 0 {
        return Ok(None);
    }
    let Sender::Mailbox(to) = &entry.parsed.header.sender else {
        logging::info(&format!("{id}: no sender notification: the sender is null (<>)"));
        return Ok(None);
    };
    let recipients: Vec<Recipient> = state
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Failed)
        .map(|r| failed_recipient(r, &state.last_error))
        .collect();
    let notice = queue_notice(store, settings, entry, to, Kind::Failure, recipients)?;
    logging::info(&format!("{id}: sender notification: {notice}"));
    Ok(Some(notice))
}

/// Queue the one delay notice for `entry` if it is due: `delay_warning_time`
/// is set, the message has waited that long, recipients are pending, none
/// was sent before (`state.warned`) and the sender is not null. Sets
/// `state.warned`; the caller writes the state. Logs
/// `ID: sender notification: NOTICEID (delay warning)`.
pub fn queue_delay_notice(
    store: &Store,
    settings: &Settings,
    entry: &Loaded,
    state: &mut State,
) -> Result<Option<QueueId>, String> {
    let Some(after) = settings.runner.delay_warning_time else { return Ok(None) };
    let t = now();
    let age = t.saturating_sub(entry.parsed.header.arrival);
    if state.warned.is_some() || age < after.as_secs() || state.count(RcptStatus::Pending) == 0 {
        return Ok(None);
    }
    let Sender::Mailbox(to) = &entry.parsed.header.sender else { return Ok(None) };
    let recipients: Vec<Recipient> = state.pending().map(delayed_recipient).collect();
    let notice = queue_notice(store, settings, entry, to, Kind::Delay, recipients)?;
    state.warned = Some(t);
    logging::info(&format!("{}: sender notification: {notice} (delay warning)", entry.id));
    Ok(Some(notice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_stops_at_the_first_empty_line() {
        assert_eq!(header_section(b"A: 1\r\nB: 2\r\n\r\nbody\n", false), b"A: 1\nB: 2\n");
        assert_eq!(header_section(b"A: 1\n folded\n\nB: body\n", true), b"A: 1\n folded\n");
        // Headers only, last line unterminated: kept when complete.
        assert_eq!(header_section(b"A: 1\nB: 2", true), b"A: 1\nB: 2\n");
        // Cut by the size bound: the partial line is dropped.
        assert_eq!(header_section(b"A: 1\nB: 2", false), b"A: 1\n");
        assert_eq!(header_section(b"\nbody", true), b"");
        assert_eq!(header_section(b"", true), b"");
    }

    fn rcpt(reply: &str, status: RcptStatus) -> Rcpt {
        Rcpt { address: Mailbox::parse(b"bob@example.net").unwrap(), origin: None, status, reply: reply.into() }
    }

    #[test]
    fn failed_recipients_take_the_servers_code_or_a_default() {
        let r = failed_recipient(&rcpt("550 5.1.1 no such user", RcptStatus::Failed), "");
        assert_eq!((r.status.as_str(), r.diagnostic.as_deref()), ("5.1.1", Some("550 5.1.1 no such user")));
        let r = failed_recipient(&rcpt("/bin/x exit 1", RcptStatus::Failed), "");
        assert_eq!(r.status, "5.0.0");
        let r = failed_recipient(&rcpt("", RcptStatus::Failed), "");
        assert_eq!((r.status.as_str(), r.diagnostic), ("5.0.0", None));
        let r = failed_recipient(&rcpt("bad\u{7}byte", RcptStatus::Failed), "");
        assert_eq!(r.reason, "bad\\x07byte");
    }

    #[test]
    fn expired_recipients_are_4_4_7_with_the_last_error() {
        let expired = "message expired: maximal_queue_lifetime reached";
        let r = failed_recipient(&rcpt(expired, RcptStatus::Failed), "451 4.3.0 busy");
        assert_eq!(r.status, "4.4.7");
        assert_eq!(r.diagnostic.as_deref(), Some("451 4.3.0 busy"));
        assert!(r.reason.ends_with("; last error: 451 4.3.0 busy"));
        let r = failed_recipient(&rcpt(expired, RcptStatus::Failed), "");
        assert_eq!((r.status.as_str(), r.diagnostic), ("4.4.7", None));
    }

    #[test]
    fn delayed_recipients_are_4_x_y() {
        assert_eq!(delayed_recipient(&rcpt("451 4.7.1 greylisted", RcptStatus::Pending)).status, "4.7.1");
        assert_eq!(delayed_recipient(&rcpt("/bin/x exit 75", RcptStatus::Pending)).status, "4.0.0");
    }
}
