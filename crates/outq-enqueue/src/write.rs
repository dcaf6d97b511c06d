/*!
Writing one entry: create in `tmp/`, stream, commit into `new/`.

1. A fresh queue ID names `tmp/ID`, created with
   `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC` and mode 0404 (set again with
   `fchmod`, whatever the umask), and locked with
   `flock(LOCK_EX)` for as long as the helper lives: the runner removes a
   file in `tmp/` as soon as it can take that lock, because its writer is
   then dead (killed, or gone without cleaning up). The new file is checked
   on its descriptor after the lock (regular, one link, our uid and the
   spool's group): a file the runner removed in the instant between
   creation and lock has no link left and is refused (75). Then, with
   `submit_share` in force, the account's ledger records the ID (see
   `share`), the file existing and locked.
2. Standard input is gathered in a 64 KiB buffer (constant memory),
   refusing NUL bytes and anything past `message_size_limit`; the buffer
   goes to disk when it is full or when no more input is ready at once,
   so what the caller sent is on disk whenever the helper waits (a
   regular file as input is read without waiting: it never blocks).
   Pieces end at multiples of 64 KiB in the file (the first is shorter
   by the header's length), so that the writes cover whole pages. A
   message that has ended by then within the first buffer (most mail) is
   written whole with one `pwritev`: header with the real size, message,
   trailer, never copied together. A longer one: the header with a zero
   size and the first piece, the pieces, the last piece with the
   trailer, then the real size in place.
3. `renameat2(RENAME_NOREPLACE)` from `tmp/ID` to `new/ID`: the single
   commit point (the file already has the committed mode 0404, set in
   step 1). A reader never sees a partial entry in `new/` except after a
   crash before step 4, and then the runner refuses it (size field and
   trailer) and quarantines it; the caller was never told it was queued.
4. One `fsync` on the file, after the rename: it writes the data, the
   inode and the new name in one go (the helper may not open `new/` for
   reading, by design, so it cannot `fsync` the directory). Only then is
   the queue ID printed and 0 returned. Why this one flush is enough on
   ext4 (with and without a journal), XFS and btrfs: outq-spool(5),
   DURABILITY. The file's descriptor and lock are then left to the
   kernel, which drops both at exit a moment later: the lock only ever
   matters in `tmp/`.

Any failure or termination signal before step 3 unlinks `tmp/ID`; SIGKILL
can only leave an unlocked file in `tmp/`, which the runner removes at its
next queue run.
*/
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::sys::uio::pwritev;
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};
use outq_spool::config::Config;
use outq_spool::entry::{self, Header};
use outq_spool::exit::Code;
use outq_spool::fs;
use outq_spool::layout;
use outq_spool::log;
use outq_spool::process;
use outq_spool::queue_id::QueueId;

use crate::failure::Failure;
use crate::policy::{Caller, Envelope};
use crate::spool::Dirs;
use crate::startup::Env;

const CHUNK: usize = 64 * 1024;

/// A temporary file in `tmp/`, locked while we live, removed unless
/// committed.
pub struct TempEntry<'a> {
    dirs: &'a Dirs,
    pub id: QueueId,
    /// When the ID was made: the entry's arrival time.
    made: SystemTime,
    file: Flock<std::fs::File>,
    committed: bool,
}

impl Drop for TempEntry<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(self.dirs.tmp.as_fd(), self.id.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

fn io_failure(step: &str, e: Errno) -> Failure {
    match e {
        Errno::ENOSPC | Errno::EDQUOT => {
            Failure::temp(format!("spool filesystem full while {step}"), "free disk space on the spool's filesystem")
        }
        Errno::EFBIG => Failure::temp(
            format!("file size limit reached while {step}"),
            "raise the caller's file size limit (ulimit -f)",
        ),
        Errno::EMFILE | Errno::ENFILE => Failure::temp(
            format!("too many open files while {step}"),
            "raise the caller's open files limit (ulimit -n)",
        ),
        _ => Failure::temp(
            format!("I/O error while {step}: {}", e.desc()),
            "check the spool filesystem and the system log",
        ),
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}

fn interrupted(sig: i32) -> Failure {
    if sig == nix::sys::signal::Signal::SIGALRM as i32 {
        Failure::temp("timed out waiting for the message", "send the whole message and close standard input")
    } else {
        Failure::temp(format!("interrupted by signal {sig}"), "submit the message again")
    }
}

/// Create and lock `tmp/ID` for a fresh ID, retrying on the (unlikely)
/// collision.
pub fn create<'a>(dirs: &'a Dirs, env: &Env) -> Result<TempEntry<'a>, Failure> {
    let now = SystemTime::now();
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    for _ in 0..8 {
        let id = QueueId::generate(now)
            .map_err(|e| Failure::temp(format!("cannot get random bytes: {e}"), "check the kernel's random source"))?;
        let fd = match openat(dirs.tmp.as_fd(), id.as_str(), flags, Mode::from_bits_truncate(layout::TMP_ENTRY_MODE)) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(io_failure("creating the queue file", e)),
        };
        let file = match Flock::lock(std::fs::File::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((file, e)) => {
                drop(file);
                let _ = unlinkat(dirs.tmp.as_fd(), id.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(io_failure("locking the queue file", e));
            }
        };
        let entry = TempEntry { dirs, id, made: now, file, committed: false };
        verify_created(&entry, env)?;
        return Ok(entry);
    }
    Err(Failure::temp("could not find a free queue file name", "try again"))
}

/// The file we just created must be ours: regular, one link, our uid, the
/// spool's group, and exactly the mode we asked for whatever the umask.
fn verify_created(entry: &TempEntry<'_>, env: &Env) -> Result<(), Failure> {
    fchmod(entry.file.as_fd(), Mode::from_bits_truncate(layout::TMP_ENTRY_MODE))
        .map_err(|e| io_failure("setting the queue file's mode", e))?;
    let st = fstat(entry.file.as_fd()).map_err(|e| io_failure("checking the queue file", e))?;
    if !fs::is_regular(&st) || st.st_nlink != 1 || st.st_uid != env.euid.as_raw() || st.st_gid != env.egid.as_raw() {
        return Err(Failure::temp("the new queue file is not what was created", "check the spool with 'outq check'"));
    }
    Ok(())
}

/// The entry being written: what is on disk so far.
struct Progress {
    /// The header's length, once it is on disk (with a zero size).
    header_len: Option<u64>,
    /// Message bytes on disk after the header.
    written: u64,
    size_offset: u64,
}

/// Put `data` on disk after what is there, the header (with a zero size)
/// first if it is not yet: one `pwritev` either way.
fn flush(entry: &TempEntry<'_>, header: &Header, progress: &mut Progress, data: &[u8]) -> Result<(), Failure> {
    let result = match progress.header_len {
        Some(len) => write_parts_at(&entry.file, [data, &[], &[]], len + progress.written),
        None => {
            let encoded = header.encode();
            progress.header_len = Some(encoded.bytes.len() as u64);
            progress.size_offset = encoded.size_offset as u64;
            write_parts_at(&entry.file, [&encoded.bytes, data, &[]], 0)
        }
    };
    result.map_err(|e| io_failure("writing the message", e))?;
    progress.written += data.len() as u64;
    Ok(())
}

/// Write `parts` one after the other from `offset`: header, message and
/// trailer go to the kernel as they are, never copied together first.
/// One `pwritev`, unless the kernel takes less (then the rest follows).
fn write_parts_at(file: &std::fs::File, mut parts: [&[u8]; 3], mut offset: u64) -> Result<(), Errno> {
    while parts.iter().any(|p| !p.is_empty()) {
        let at = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
        let n = match pwritev(file, &parts.map(IoSlice::new), at) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        offset += n as u64;
        let mut left = n;
        for part in &mut parts {
            let done = left.min(part.len());
            *part = part.get(done..).unwrap_or(&[]);
            left -= done;
        }
    }
    Ok(())
}

/// Write the entry: header, standard input, trailer; returns the message
/// size. Input is gathered in a [`CHUNK`]-byte buffer (constant memory),
/// which goes to disk when it is full or when no more input is ready at
/// once (so whatever the caller has sent is on disk while the helper
/// waits for more). A message that has ended by then, within the first
/// buffer (most mail), is written with one `pwritev`, its header already
/// carrying the real size; otherwise the header goes first with a zero
/// size, the last piece goes with the trailer, and the real size is
/// written in place at the end.
fn write_entry(entry: &TempEntry<'_>, env: &Env, header: &mut Header, limit: u64) -> Result<u64, Failure> {
    // read(2) on descriptor 0 directly: std's Stdin would report EBADF (a
    // write-only descriptor) as end of input.
    let stdin = std::io::stdin();
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0usize;
    let mut progress = Progress { header_len: None, written: 0, size_offset: 0 };
    // read(2) from a regular file never waits for a writer, so there is
    // nothing to wait for and no partial input to put on disk meanwhile:
    // such input is read without `poll` (a signal that came meanwhile is
    // still seen before the commit). A pipe, socket or terminal is polled.
    let wait = !fstat(stdin.as_fd()).is_ok_and(|st| fs::is_regular(&st));
    // Each piece ends at a multiple of CHUNK in the file (the first is
    // shortened by the header), so the writes after it cover whole pages:
    // the page cache then keeps the file in large folios, and the flush
    // sends it to the disk in fewer, larger requests. Unaligned 64 KiB
    // writes made the `fsync` of a 1 MB entry about 0.1 ms slower than
    // dd's on ext4.
    let header_len = header.encode().bytes.len() as u64;
    let piece = |progress: &Progress| {
        let at = progress.header_len.unwrap_or(header_len) + progress.written;
        CHUNK - (at % CHUNK as u64) as usize
    };
    loop {
        // Wait for input or a termination signal, whichever comes first;
        // then read(2) does not block. With input in hand, only look.
        let timeout = (filled > 0).then_some(0);
        match wait.then(|| env.signals.wait_readable_for(stdin.as_fd(), timeout)) {
            None | Some(Ok(Some(process::Wait::Ready))) => {}
            Some(Ok(Some(process::Wait::Signal(sig)))) => return Err(interrupted(sig)),
            Some(Ok(None)) => {
                flush(entry, header, &mut progress, buf.get(..filled).unwrap_or(&[]))?;
                filled = 0;
                continue;
            }
            Some(Err(e)) => {
                return Err(Failure::temp(format!("cannot wait for input: {e}"), "report this as a bug"));
            }
        }
        if filled == piece(&progress) {
            flush(entry, header, &mut progress, buf.get(..filled).unwrap_or(&[]))?;
            filled = 0;
        }
        let end = piece(&progress);
        let n = match nix::unistd::read(stdin.as_fd(), buf.get_mut(filled..end).unwrap_or(&mut [])) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Failure::new(
                    Code::NoInput,
                    format!("cannot read standard input: {}", e.desc()),
                    "give the message on standard input",
                ));
            }
        };
        if contains_nul(buf.get(filled..filled + n).unwrap_or(&[])) {
            return Err(Failure::new(
                Code::DataErr,
                "the message contains a NUL byte",
                "encode binary content (MIME base64)",
            ));
        }
        filled += n;
        if progress.written + filled as u64 > limit {
            return Err(Failure::new(
                Code::DataErr,
                format!("message larger than message_size_limit ({limit} bytes)"),
                "send a smaller message or raise message_size_limit in outq.conf",
            ));
        }
    }
    let size = progress.written + filled as u64;
    if size == 0 {
        return Err(empty());
    }
    let rest = buf.get(..filled).unwrap_or(&[]);
    let Some(header_len) = progress.header_len else {
        // All of it in hand: the whole entry in one write.
        header.size = size;
        let encoded = header.encode();
        write_parts_at(&entry.file, [&encoded.bytes, rest, entry::TRAILER], 0)
            .map_err(|e| io_failure("writing the message", e))?;
        return Ok(size);
    };
    // The rest and the trailer in one write, then the size in place.
    write_parts_at(&entry.file, [rest, entry::TRAILER, &[]], header_len + progress.written)
        .map_err(|e| io_failure("writing the trailer", e))?;
    entry
        .file
        .write_all_at(entry::format_size(size).as_bytes(), progress.size_offset)
        .map_err(|e| io_failure("writing the size", errno_of(&e)))?;
    Ok(size)
}

/// Whether `data` holds a NUL byte. Each 64-byte block is tested whole,
/// with no early exit inside it, which the compiler turns into vector
/// instructions: about 3.5 times as fast as `<[u8]>::contains` here, on
/// every byte of every message.
fn contains_nul(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(false, |nul, &b| nul | (b == 0)) {
            return true;
        }
    }
    blocks.remainder().contains(&0)
}

fn empty() -> Failure {
    Failure::new(Code::DataErr, "the message is empty", "give the message on standard input")
}

/// Write, commit and make durable the entry `create` made; returns its
/// queue ID and the message size.
pub fn submit(
    mut entry: TempEntry<'_>,
    cfg: &Config,
    env: &Env,
    caller: &Caller,
    envelope: &Envelope,
) -> Result<(QueueId, u64), Failure> {
    let arrival = entry.made.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut header = Header {
        id: entry.id.clone(),
        arrival,
        uid: caller.uid,
        login: caller.login.clone(),
        sender: envelope.sender.clone(),
        recipients: envelope.recipients.clone(),
        size: 0,
    };
    let size = write_entry(&entry, env, &mut header, cfg.message_size_limit)?;
    // The file was created with the committed mode (checked by
    // `verify_created`); a different committed mode is set here.
    if layout::ENTRY_MODE != layout::TMP_ENTRY_MODE {
        fchmod(entry.file.as_fd(), Mode::from_bits_truncate(layout::ENTRY_MODE))
            .map_err(|e| io_failure("setting the queue file's mode", e))?;
    }
    if let Some(sig) = env.signals.pending() {
        return Err(interrupted(sig));
    }
    commit(&mut entry)?;
    let id = entry.id.clone();
    // Durable and in new/: the descriptor and its lock are left to the
    // kernel, which drops both when the process exits a moment later (no
    // reader locks entries in new/, and the lock only ever mattered in tmp/).
    std::mem::forget(entry);
    Ok((id, size))
}

/// The commit point: rename into `new/` without replacing, then make the
/// entry durable, data and name, with one `fsync` of the file.
fn commit(entry: &mut TempEntry<'_>) -> Result<(), Failure> {
    let (id, dirs) = (entry.id.as_str(), entry.dirs);
    renameat2(dirs.tmp.as_fd(), id, dirs.new.as_fd(), id, RenameFlags::RENAME_NOREPLACE)
        .map_err(|e| io_failure("committing the queue file", e))?;
    // From here on the entry is in new/; tmp/ID no longer exists.
    entry.committed = true;
    if let Err(e) = fsync(entry.file.as_fd()) {
        // Not known to be durable: take it back if the runner has not
        // claimed it yet, and let the caller retry (a duplicate is better
        // than a loss).
        let _ = unlinkat(dirs.new.as_fd(), id, UnlinkatFlags::NoRemoveDir);
        return Err(io_failure("flushing the queue file", e));
    }
    Ok(())
}

/// Print the queue ID and log the acceptance: one line, which also carries
/// the queue ID to a caller that closed its standard output.
pub fn announce(id: &QueueId, size: u64, caller: &Caller, envelope: &Envelope, env: &Env) {
    use std::io::Write;
    let printed = if env.stdout_closed {
        Ok(())
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{id}").and_then(|()| out.flush())
    };
    let login = caller.login.as_deref().map(|l| format!(" ({})", log::escape(l.as_bytes()))).unwrap_or_default();
    let note = if env.stdout_closed { " (standard output closed: queue ID logged only)" } else { "" };
    log::info(&format!(
        "{id}: uid={}{login} from={} nrcpt={} size={size}{note}",
        caller.uid,
        log::escape(envelope.sender.to_string().as_bytes()),
        envelope.recipients.len()
    ));
    if let Err(e) = printed {
        log::warning(&format!("{id}: accepted, but the queue ID could not be printed: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::contains_nul;

    #[test]
    fn finds_a_nul_wherever_it_is() {
        assert!(!contains_nul(b""));
        for len in [1usize, 63, 64, 65, 127, 128, 1000, 64 * 1024] {
            let clean = vec![b'x'; len];
            assert!(!contains_nul(&clean), "{len}");
            for at in [0, len / 2, len - 1] {
                let mut with = clean.clone();
                with[at] = 0;
                assert!(contains_nul(&with), "NUL at {at} of {len}");
            }
        }
    }
}
