/*!
One runner per spool: an exclusive, non-blocking `flock(2)` on the spool's
`lock` file. The kernel drops the lock when its holder dies, so a lock is
never "stale" and never stolen. The holder writes its pid into the file for
the message a second runner prints; the pid is informational only.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use outq_spool::layout;

use crate::error::Error;
use crate::queue::store::Store;

/// The held lock; dropping it releases the queue.
#[derive(Debug)]
pub struct QueueLock {
    _lock: Flock<File>,
}

/// The pid recorded in the lock file, if readable.
fn holder(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Record our pid in the lock we now hold.
fn locked(mut lock: Flock<File>) -> QueueLock {
    let _ = lock.set_len(0);
    let _ = lock.seek(SeekFrom::Start(0));
    let _ = writeln!(lock, "{}", std::process::id());
    QueueLock { _lock: lock }
}

/// Take the queue lock or explain who holds it (exit 75).
pub fn acquire(store: &Store) -> Result<QueueLock, Error> {
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let shown = format!("{}/{}", store.root.display(), layout::LOCK);
    let fd = openat(store.root_fd().as_fd(), layout::LOCK, flags, Mode::empty())
        .map_err(|e| Error::temp(format!("cannot open {shown}: {}", e.desc()), "run 'outq init'"))?;
    let st = fstat(fd.as_fd()).map_err(|e| Error::temp(format!("{shown}: {}", e.desc()), "run 'outq check'"))?;
    if !outq_spool::fs::is_regular(&st) {
        return Err(Error::temp(format!("{shown} is not a regular file"), "remove it and run 'outq init'"));
    }
    // `outq status` takes the lock shared for an instant to see whether a
    // runner holds it; retry for a moment so that cannot stop a start.
    let mut file = File::from(fd);
    for _ in 0..20 {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(locked(lock)),
            Err((f, Errno::EWOULDBLOCK)) => file = f,
            Err((_, e)) => {
                return Err(Error::temp(format!("cannot lock {shown}: {}", e.desc()), "check the spool filesystem"));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(locked(lock)),
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let pid = holder(&mut file).map(|p| format!("pid {p}")).unwrap_or_else(|| "unknown pid".into());
            Err(Error::temp(
                format!("another runner ({pid}) holds the queue lock"),
                "only one 'outq run' may drain a spool; stop the other first",
            ))
        }
        Err((_, e)) => Err(Error::temp(format!("cannot lock {shown}: {}", e.desc()), "check the spool filesystem")),
    }
}

/// Whether some runner holds the lock, and its pid (for `outq status`).
pub fn probe(store: &Store) -> Option<Option<u32>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = openat(store.root_fd().as_fd(), layout::LOCK, flags, Mode::empty()).ok()?;
    match Flock::lock(File::from(fd), FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err((mut file, _)) => Some(holder(&mut file)),
    }
}
