/*!
Queueing a notice: the runner writes an entry exactly as the helper does,
so it is picked up from `new/` and validated like any other.

1. `tmp/ID` for a fresh queue ID, `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600;
   the file is checked on its descriptor: regular, one link, our uid, and
   the helper's group, which it gets from the set-group-ID `tmp/` (the
   pickup refuses any other group, so a spool whose `tmp/` lost its
   set-group-ID bit is reported here rather than producing a notice that
   would be quarantined).
2. The whole entry (header, message, trailer) is written, `fchmod` 0404,
   `fsync`.
3. `renameat2(RENAME_NOREPLACE)` into `new/`, then `fsync` of the file and
   of `new/` (the runner, unlike the helper, may open `new/`).

Any failure before the rename removes `tmp/ID`.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Uid, UnlinkatFlags, User, fsync, geteuid, unlinkat};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::entry::{self, Header, Limits};
use outq_spool::layout::{ENTRY_MODE, TMP_ENTRY_MODE};
use outq_spool::queue_id::QueueId;

use crate::logging;
use crate::queue::store::{Queue, Store};

/// `tmp/ID`, removed on drop unless committed.
struct Temp<'a> {
    store: &'a Store,
    id: QueueId,
    /// Locked like the helper's files, so that a sweep of `tmp/` never
    /// takes a notice being written for an abandoned one.
    file: Flock<File>,
    committed: bool,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(self.store.dir(Queue::Tmp).as_fd(), self.id.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

fn sys(step: &str, e: Errno) -> String {
    format!("cannot {step}: {}", e.desc())
}

fn io(step: &str, e: &std::io::Error) -> String {
    format!("cannot {step}: {e}")
}

/// The login recorded in the entry: the runner's account name, or its uid
/// when the name is not storable.
fn login(uid: Uid) -> String {
    match User::from_uid(uid) {
        Ok(Some(u)) if entry::is_valid_login(&u.name) => u.name,
        _ => uid.to_string(),
    }
}

fn create(store: &Store) -> Result<Temp<'_>, String> {
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    for _ in 0..8 {
        let id = QueueId::generate(SystemTime::now()).map_err(|e| io("get random bytes", &e))?;
        let mode = Mode::from_bits_truncate(TMP_ENTRY_MODE);
        let fd = match openat(store.dir(Queue::Tmp).as_fd(), id.as_str(), flags, mode) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(sys("create a file in tmp/", e)),
        };
        let file = match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, e)) => {
                let _ = store.unlink(Queue::Tmp, id.as_str());
                return Err(sys("lock the new file in tmp/", e));
            }
        };
        let temp = Temp { store, id, file, committed: false };
        fchmod(temp.file.as_fd(), mode).map_err(|e| sys("set the mode of the new file", e))?;
        let st = fstat(temp.file.as_fd()).map_err(|e| sys("examine the new file", e))?;
        if !outq_spool::fs::is_regular(&st) || st.st_nlink != 1 || st.st_uid != geteuid().as_raw() {
            return Err("the new file in tmp/ is not what was created".into());
        }
        if st.st_gid != store.drop_gid.as_raw() {
            return Err(format!(
                "a file created in tmp/ gets group {}, not the helper's group {} (tmp/ must be set-group-ID; \
                 run 'outq check')",
                st.st_gid, store.drop_gid
            ));
        }
        return Ok(temp);
    }
    Err("no free queue file name in tmp/".into())
}

/// Queue `message` (built by `compose` for the new entry's queue ID) from
/// the null sender to `recipient`. Returns the new entry's queue ID.
pub fn enqueue(
    store: &Store,
    limits: &Limits,
    recipient: &Mailbox,
    compose: impl FnOnce(&QueueId) -> Vec<u8>,
) -> Result<QueueId, String> {
    let mut temp = create(store)?;
    let message = compose(&temp.id);
    if message.is_empty() || message.len() as u64 > limits.max_size {
        return Err(format!("the notice ({} bytes) is over message_size_limit", message.len()));
    }
    if limits.max_recipients == 0 {
        return Err("max_recipients is 0".into());
    }
    let arrival = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let me = geteuid();
    let header = Header {
        id: temp.id.clone(),
        arrival,
        uid: me.as_raw(),
        login: Some(login(me)),
        sender: Sender::Null,
        recipients: vec![recipient.clone()],
        size: message.len() as u64,
    };
    let bytes = entry::to_bytes(&header, &message);
    temp.file.write_all_at(&bytes, 0).map_err(|e| io("write the notice", &e))?;
    fchmod(temp.file.as_fd(), Mode::from_bits_truncate(ENTRY_MODE)).map_err(|e| sys("set the entry's mode", e))?;
    fsync(temp.file.as_fd()).map_err(|e| sys("flush the notice", e))?;
    let id = temp.id.clone();
    renameat2(
        store.dir(Queue::Tmp).as_fd(),
        id.as_str(),
        store.dir(Queue::New).as_fd(),
        id.as_str(),
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| sys("move the notice into new/", e))?;
    temp.committed = true;
    // Committed: the pickup may already have it, so a failure from here
    // on only weakens durability; it is logged, and the entry kept.
    if let Err(e) = fsync(temp.file.as_fd()).and_then(|()| store.sync(Queue::New)) {
        logging::warning(&format!("{id}: notice queued but not flushed to disk: {}", e.desc()));
    }
    Ok(id)
}
