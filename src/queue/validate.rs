/*!
Re-validation of an entry before the runner trusts anything in it.

Everything in `new/` was written by whoever held the helper's group, which
the runner does not trust. An entry is opened with `O_NOFOLLOW|O_NONBLOCK`
(no symbolic link is followed, no FIFO blocks), and must be a regular file
with exactly one link, the helper's group, the committed mode 0404, a size
within the limit, a well-formed header whose ID is the file's name, and
the trailer exactly at the end. The submitter is the file's owner.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::BufReader;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use outq_spool::entry::{self, Limits, Parsed, TRAILER};
use outq_spool::layout::ENTRY_MODE;
use outq_spool::queue_id::QueueId;

use super::store::{Queue, Store};

/// A validated entry, open.
#[derive(Debug)]
pub struct Loaded {
    pub id: QueueId,
    pub file: File,
    pub parsed: Parsed,
    /// The submitter: the file's owner.
    pub owner: u32,
    pub inode: u64,
}

/// Limit on the header (envelope) part, beyond the message size.
const HEADER_ALLOWANCE: u64 = 1 << 20;

/// Open and check entry `name` in `q`.
pub fn load(store: &Store, q: Queue, name: &str, limits: &Limits) -> Result<Loaded, String> {
    let id = QueueId::parse(name).ok_or("the name is not a queue ID")?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match openat(store.dir(q).as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => return Err("a symbolic link".into()),
        Err(e) => return Err(format!("cannot open: {}", e.desc())),
    };
    let st = fstat(fd.as_fd()).map_err(|e| format!("cannot examine: {}", e.desc()))?;
    if !outq_spool::fs::is_regular(&st) {
        return Err("not a regular file".into());
    }
    if st.st_nlink != 1 {
        return Err(format!("{} hard links", st.st_nlink));
    }
    if st.st_gid != store.drop_gid.as_raw() {
        return Err(format!("group {} is not the helper's group {}", st.st_gid, store.drop_gid));
    }
    if st.st_mode & 0o7777 != ENTRY_MODE {
        return Err(format!("mode {:04o} is not {ENTRY_MODE:04o}", st.st_mode & 0o7777));
    }
    let len = u64::try_from(st.st_size).unwrap_or(0);
    if len > limits.max_size.saturating_add(HEADER_ALLOWANCE) {
        return Err(format!("{len} bytes is over the size limit"));
    }
    let file = File::from(fd);
    let parsed = entry::parse_header(&mut BufReader::new(&file), limits).map_err(|e| e.to_string())?;
    if parsed.header.id != id {
        return Err(format!("header names {} but the file is {name}", parsed.header.id));
    }
    let mut tail = [0u8; TRAILER.len()];
    let at = len.saturating_sub(TRAILER.len() as u64);
    file.read_exact_at(&mut tail, at).map_err(|e| format!("cannot read the trailer: {e}"))?;
    entry::verify_layout(&parsed, len, &tail).map_err(|e| e.to_string())?;
    Ok(Loaded { id, file, parsed, owner: st.st_uid, inode: st.st_ino })
}
