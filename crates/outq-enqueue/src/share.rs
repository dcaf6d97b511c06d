/*!
The per-account share of the spool (`submit_share`): one caller may not
hold more than that in `tmp/` and `new/` together, so that one account,
compromised or buggy, cannot bring every other caller to the free-space
limit.

The helper's group may not list `tmp/` or `new/`, so each account has a
ledger, `tmp/.share.UID`: the queue IDs it submitted that may still be in
`tmp/` or `new/`, one per line. A line `ID BYTES` is an ID looked up by a
past submission and counted for what it held then; a line `ID` alone, one
recorded since and counted at `message_size_limit`. Under an exclusive
`flock` on the ledger, the helper

1. adds up the counts; a recorded ID is never counted for less than it can
   hold (see below), so when that total plus `message_size_limit` for the
   new message is within the share, the account is within it too;
2. looks every recorded ID up by name (`new/ID`, then `tmp/ID`) when that
   total nears the share, or when the IDs recorded since the last look-up
   are at least [`PRUNE_MIN`] and as many as those looked up then: an entry
   in `new/` counts its size (a committed entry never grows); a file in
   `tmp/` whose writer still holds its lock counts at least
   `message_size_limit` (it may grow to that), an abandoned one its size
   (the runner reclaims it at its next queue run); an ID found in neither
   has been picked up or removed and is dropped. Those sizes replace the
   recorded counts, and the helper refuses (75, naming `submit_share`) when
   their sum plus `message_size_limit` is over the share;
3. records the ID of its own `tmp/ID`, which it created and locked before
   it took the ledger (so the ledger's lock, which every submission of
   the account waits for, is held only to read, look up and append), then
   releases the ledger. Over the share, that file is removed.

While the runner drains the queue, most recorded IDs are gone at each
look-up, so the ledger stays a few dozen lines long, and its reading and
rewriting stay cheap. While it does not, the ledger grows, but each
look-up waits for as many new records as it found alive: on average a
submission looks up at most two IDs, however many of the account's
messages are waiting.

Concurrent helpers of one account thus each see the others' files, and the
account's total stays under its share. The ledger is owned by the account
(mode 0600) and reachable only through `tmp/`, which only the group and
the queue owner can search; a ledger owned by anyone else (planted by a
holder of the group) is not trusted: the limit is not applied and the
helper says so in the log. The name comes from the kernel's uid, never
from the caller. Nothing in the ledger is needed for delivery: lost or
damaged, it only resets the account's count.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FlockArg, OFlag, openat};
use nix::sys::stat::{Mode, fstat, fstatat};
use outq_spool::config::Config;
use outq_spool::fs;
use outq_spool::log;
use outq_spool::queue_id::QueueId;

use crate::failure::Failure;
use crate::spool::Dirs;
use crate::startup::Env;

/// Most IDs a ledger keeps: past that, the account has this many messages
/// waiting, which means the runner is not draining the queue.
const MAX_RECORDS: usize = 10_000;

/// Largest ledger read: MAX_RECORDS lines of a queue ID and a count.
const MAX_LEDGER: u64 = 64 * MAX_RECORDS as u64;

/// IDs recorded since the last look-up that make the next one due (when
/// they are also at least as many as the IDs that look-up kept).
const PRUNE_MIN: usize = 32;

/// One recorded queue ID: the bytes it is counted for, and whether that
/// count came from a look-up (`ID BYTES`) or is the reserve of a new
/// record (`ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    id: String,
    bytes: u64,
    looked_up: bool,
}

/// An account's ledger, locked until it is dropped (closed: see
/// `outq_spool::fs::lock`).
pub struct Ledger {
    file: File,
    /// How the new record is written.
    update: Update,
    /// The bytes a new record is counted for: `message_size_limit`.
    reserve: u64,
}

enum Update {
    /// The ledger as read is kept: the new line goes at this offset, its
    /// end (the common case, which reads no record into memory).
    Append(u64),
    /// The ledger is written anew from these records (after a look-up,
    /// or when it was cut or damaged), truncated when it got shorter
    /// than `len`, its length as read (`None`: longer than was read).
    Rewrite { records: Vec<Record>, len: Option<u64> },
}

fn name_for(uid: u32) -> String {
    format!("{}{uid}", outq_spool::layout::SHARE_LEDGER_PREFIX)
}

/// The bytes `id` holds in the spool now, or `None` when it is gone.
fn held(dirs: &Dirs, id: &str, size_limit: u64) -> Option<u64> {
    let size = |st: &nix::sys::stat::FileStat| u64::try_from(st.st_size).unwrap_or(0);
    if let Ok(st) = fstatat(dirs.new.as_fd(), id, AtFlags::AT_SYMLINK_NOFOLLOW) {
        return Some(size(&st));
    }
    let st = fstatat(dirs.tmp.as_fd(), id, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let live = match openat(dirs.tmp.as_fd(), id, flags, Mode::empty()) {
        Ok(fd) => matches!(fs::lock(fd.as_fd(), FlockArg::LockSharedNonblock), Err(Errno::EWOULDBLOCK)),
        Err(_) => false,
    };
    Some(if live { size(&st).max(size_limit) } else { size(&st) })
}

fn over_share(limit: u64, used: u64) -> Failure {
    Failure::temp(
        format!("your messages waiting in the spool ({used} bytes) would exceed submit_share ({limit} bytes)"),
        "wait until the queue runner has taken them, or raise submit_share in outq.conf",
    )
}

/// Open and lock the caller's ledger and check its share; `None` when no
/// share applies. `total` is the spool file system's size.
pub fn check(dirs: &Dirs, cfg: &Config, env: &Env, total: u64) -> Result<Option<Ledger>, Failure> {
    let Some(limit) = cfg.submit_share.bytes(total) else { return Ok(None) };
    let uid = env.euid.as_raw();
    let name = name_for(uid);
    // Opened without O_CREAT first: with it, the kernel takes tmp/'s lock
    // exclusively, which concurrent helpers creating their files there
    // would wait for; the ledger exists after an account's first message.
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o600);
    let fd: OwnedFd = match openat(dirs.tmp.as_fd(), name.as_str(), flags, mode) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => match openat(dirs.tmp.as_fd(), name.as_str(), flags | OFlag::O_CREAT, mode) {
            Ok(fd) => fd,
            Err(e) => return Err(ledger_failure(&name, e)),
        },
        Err(e) => return Err(ledger_failure(&name, e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| ledger_failure(&name, e))?;
    if !fs::is_regular(&st) || st.st_uid != env.euid.as_raw() || st.st_nlink != 1 {
        log::warning(&format!(
            "tmp/{name} is not this account's ledger (owner uid {}); submit_share not applied",
            st.st_uid
        ));
        return Ok(None);
    }
    fs::lock(fd.as_fd(), FlockArg::LockExclusive).map_err(|e| ledger_failure(&name, e))?;
    let file = File::from(fd);
    // A damaged ledger only resets the count.
    let (text, len) = read_ledger(&file, u64::try_from(st.st_size).unwrap_or(0));
    let reserve = cfg.message_size_limit;
    let t = tally(&text, reserve);
    let due = t.records >= MAX_RECORDS || t.bytes.saturating_add(reserve) > limit || prune_due(t.new, t.records);
    if !due {
        // Appending keeps every line as it is: only when the text is whole
        // and ends its last line.
        let update = match len {
            Some(len) if text.last().is_none_or(|b| *b == b'\n') => Update::Append(len),
            _ => Update::Rewrite { records: parse_records(&text, reserve), len },
        };
        return Ok(Some(Ledger { file, update, reserve }));
    }
    // Near the share by the records, or enough new ones since the last
    // look-up: find what is really held.
    let records: Vec<Record> = parse_records(&text, reserve)
        .into_iter()
        .filter_map(|r| held(dirs, &r.id, reserve).map(|bytes| Record { id: r.id, bytes, looked_up: true }))
        .collect();
    let used = sum_of(&records);
    let kept = records.len();
    let mut ledger = Ledger { file, update: Update::Rewrite { records, len }, reserve };
    if kept >= MAX_RECORDS || used.saturating_add(reserve) > limit {
        // Keep what was pruned: the next call reads less.
        ledger.write();
        return Err(over_share(limit, used));
    }
    Ok(Some(ledger))
}

/// Whether the IDs recorded since the last look-up call for one: at least
/// [`PRUNE_MIN`] of them, and at least as many as that look-up kept, so
/// that the look-ups cost at most two per submission on average. `new` of
/// `records` are new.
fn prune_due(new: usize, records: usize) -> bool {
    new >= PRUNE_MIN && new >= records.saturating_sub(new)
}

/// What a ledger's records add up to, read without keeping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    records: usize,
    /// Records since the last look-up (an ID alone).
    new: usize,
    bytes: u64,
}

/// One line of a ledger: `ID BYTES` (looked up) or `ID` (recorded since,
/// counted at `reserve`); `None` for anything else, which is skipped.
fn record_line(line: &[u8], reserve: u64) -> Option<(&[u8], u64, bool)> {
    let (id, bytes, looked_up) = match line.iter().position(|b| *b == b' ') {
        Some(sp) => {
            let digits = line.get(sp + 1..)?;
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            (line.get(..sp)?, n, true)
        }
        None => (line, reserve, false),
    };
    QueueId::is_valid(id).then_some((id, bytes, looked_up))
}

fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

fn tally(text: &[u8], reserve: u64) -> Tally {
    let mut t = Tally { records: 0, new: 0, bytes: 0 };
    for (_, bytes, looked_up) in lines(text).filter_map(|l| record_line(l, reserve)) {
        t.records += 1;
        t.new += usize::from(!looked_up);
        t.bytes = t.bytes.saturating_add(bytes);
    }
    t
}

/// The records of a ledger's text (see [`record_line`]).
fn parse_records(text: &[u8], reserve: u64) -> Vec<Record> {
    lines(text)
        .filter_map(|l| record_line(l, reserve))
        .map(|(id, bytes, looked_up)| Record { id: String::from_utf8_lossy(id).into_owned(), bytes, looked_up })
        .collect()
}

fn sum_of(records: &[Record]) -> u64 {
    records.iter().fold(0u64, |sum, r| sum.saturating_add(r.bytes))
}

/// The ledger's bytes, with their length when that is the whole file. The
/// buffer is sized from `size` (its `fstat` before the lock) plus one byte,
/// so an unchanged ledger takes one `pread`, which comes back short: the
/// end of a regular file. One that grew in the meantime is read on, up to
/// [`MAX_LEDGER`] bytes; past that only those are kept (and `None` says
/// the file is longer).
fn read_ledger(file: &File, size: u64) -> (Vec<u8>, Option<u64>) {
    let cap = usize::try_from(MAX_LEDGER).unwrap_or(usize::MAX).saturating_add(1);
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX).saturating_add(1).min(cap)];
    let mut got = 0usize;
    loop {
        if got == buf.len() {
            if buf.len() >= cap {
                buf.truncate(cap - 1);
                return (buf, None);
            }
            buf.resize(buf.len().saturating_mul(2).min(cap), 0);
        }
        let want = buf.len() - got;
        match file.read_at(buf.get_mut(got..).unwrap_or(&mut []), got as u64) {
            Ok(n) => {
                got += n;
                if n < want {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (Vec::new(), None),
        }
    }
    buf.truncate(got);
    (buf, Some(got as u64))
}

fn ledger_failure(name: &str, e: Errno) -> Failure {
    Failure::temp(
        format!("cannot use the spool's ledger tmp/{name}: {}", e.desc()),
        "check the spool with 'outq check'",
    )
}

impl Ledger {
    /// Record `id` (its file exists and is locked), counted at
    /// `message_size_limit` until a look-up finds its size, and release
    /// the ledger.
    pub fn record(mut self, id: &QueueId) {
        match &mut self.update {
            Update::Append(at) => {
                // A failure leaves the ledger without this record: it
                // undercounts by one message until the ID is gone.
                let _ = self.file.write_all_at(format!("{id}\n").as_bytes(), *at);
            }
            Update::Rewrite { records, .. } => {
                records.push(Record { id: id.as_str().to_owned(), bytes: self.reserve, looked_up: false });
                self.write();
            }
        }
    }

    fn write(&mut self) {
        let Update::Rewrite { records, len } = &self.update else { return };
        let mut text = String::with_capacity(records.len() * 48);
        for r in records {
            text.push_str(&r.id);
            if r.looked_up {
                text.push(' ');
                text.push_str(&r.bytes.to_string());
            }
            text.push('\n');
        }
        // One write from the start, and a truncation only when the text
        // got shorter. Failures leave an older ledger: it only
        // undercounts until the next submission prunes it again.
        let shorter = len.is_none_or(|old| (text.len() as u64) < old);
        let _ = self.file.write_all_at(text.as_bytes(), 0);
        if shorter {
            let _ = self.file.set_len(text.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_LEDGER, PRUNE_MIN, Record, Tally, parse_records, prune_due, read_ledger, tally};
    use std::io::Write;

    fn ledger_with(text: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("outq-ledger-test-{}-{}", std::process::id(), text.len()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn reads_the_whole_ledger_whatever_the_size_seen_before_the_lock() {
        let text = b"06B1265C19594C0F0F4629F5FF\n06B1265C19E2A243DA57983BE3\n";
        let f = ledger_with(text);
        let len = Some(text.len() as u64);
        // Unchanged since the fstat, grown since (read on), shrunk since.
        assert_eq!(read_ledger(&f, text.len() as u64), (text.to_vec(), len));
        assert_eq!(read_ledger(&f, 3), (text.to_vec(), len));
        assert_eq!(read_ledger(&f, 0), (text.to_vec(), len));
        assert_eq!(read_ledger(&f, 1000), (text.to_vec(), len));
    }

    #[test]
    fn a_ledger_past_the_limit_is_cut_and_has_no_known_length() {
        let text = vec![b'A'; usize::try_from(MAX_LEDGER).unwrap() + 10];
        let f = ledger_with(&text);
        let (read, len) = read_ledger(&f, 5);
        assert_eq!(read.len() as u64, MAX_LEDGER);
        assert_eq!(len, None);
    }

    #[test]
    fn records_carry_their_bytes_and_a_new_one_counts_at_the_reserve() {
        let text = b"06B1265C19594C0F0F4629F5FF 4274\n06B1265C19E2A243DA57983BE3\nnot-an-id 5\n\
06B1265C19E2A243DA57983BE4 x\n06B1265C19E2A243DA57983BE5 \n06b1265c19e2a243da57983be6\n\n\
06B1265C19E2A243DA57983BE7 99999999999999999999\n";
        let rec = |id: &str, bytes, looked_up| Record { id: id.to_owned(), bytes, looked_up };
        assert_eq!(
            parse_records(text, 1000),
            vec![rec("06B1265C19594C0F0F4629F5FF", 4274, true), rec("06B1265C19E2A243DA57983BE3", 1000, false)]
        );
        assert_eq!(tally(text, 1000), Tally { records: 2, new: 1, bytes: 5274 });
        assert_eq!(tally(b"", 1000), Tally { records: 0, new: 0, bytes: 0 });
    }

    #[test]
    fn a_look_up_is_due_when_the_new_records_are_many_and_outnumber_the_kept_ones() {
        let due = |kept: usize, new: usize| prune_due(new, kept + new);
        assert!(!due(0, PRUNE_MIN - 1));
        assert!(due(0, PRUNE_MIN));
        assert!(due(PRUNE_MIN, PRUNE_MIN));
        assert!(!due(PRUNE_MIN + 1, PRUNE_MIN));
        assert!(!due(1000, 999));
        assert!(due(1000, 1000));
    }
}
