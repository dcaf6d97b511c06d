/*!
`outq list --state tmp`: the files in `tmp/`, which are not entries yet:
messages being written by a helper, or left by one that died before its
commit. For each: its name, owner (the submitting account), age, size, and
whether a writer still holds its lock (`writing`) or not (`abandoned`: the
next queue run reclaims it). Only the queue owner and root see this, like
every operator command.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{Uid, User};
use serde::Serialize;

use crate::duration;
use crate::error::Error;
use crate::queue::store::{Queue, Store, now};

#[derive(Debug, Serialize)]
pub struct Leftover {
    pub name: String,
    pub uid: u32,
    pub owner: String,
    pub age: u64,
    pub size: u64,
    /// `writing` (a writer holds the lock), `abandoned`, or `unlockable`.
    pub status: &'static str,
}

/// Whether a writer holds the lock of `tmp/NAME`. Only tests the lock:
/// never reads, never removes.
fn status(store: &Store, name: &str) -> Option<Leftover> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let st = store.stat(Queue::Tmp, name).ok()?;
    let status = match openat(store.dir(Queue::Tmp).as_fd(), name, flags, Mode::empty()) {
        Ok(fd) if fstat(fd.as_fd()).is_ok_and(|s| outq_spool::fs::is_regular(&s)) => {
            match Flock::lock(File::from(fd), FlockArg::LockSharedNonblock) {
                Ok(_) => "abandoned",
                Err((_, Errno::EWOULDBLOCK)) => "writing",
                Err(_) => "unlockable",
            }
        }
        Ok(_) | Err(_) => "unlockable",
    };
    let owner = User::from_uid(Uid::from_raw(st.st_uid))
        .ok()
        .flatten()
        .map(|u| outq_spool::log::escape(u.name.as_bytes()))
        .unwrap_or_else(|| st.st_uid.to_string());
    Some(Leftover {
        name: outq_spool::log::escape(name.as_bytes()),
        uid: st.st_uid,
        owner,
        age: now().saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0)),
        size: u64::try_from(st.st_size).unwrap_or(0),
        status,
    })
}

pub fn all(store: &Store) -> Vec<Leftover> {
    let mut names = store.list(Queue::Tmp).unwrap_or_default();
    names.sort();
    names.iter().filter_map(|n| status(store, n)).collect()
}

pub fn run(o: &super::Opened, json: bool) -> Result<(), Error> {
    let files = all(&o.store);
    let text = if json {
        #[derive(Serialize)]
        struct Doc<'a> {
            tmp: &'a [Leftover],
        }
        let mut s = serde_json::to_string_pretty(&Doc { tmp: &files })
            .map_err(|e| Error::new(format!("cannot encode JSON: {e}"), "report this as a bug"))?;
        s.push('\n');
        s
    } else if files.is_empty() {
        "tmp/ is empty\n".to_owned()
    } else {
        files
            .iter()
            .map(|f| {
                format!(
                    "{:<26} tmp      {:>4} {:>9} uid={} ({}) {}\n",
                    f.name,
                    duration::age(f.age),
                    f.size,
                    f.uid,
                    f.owner,
                    f.status
                )
            })
            .collect()
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}
