/*!
Start-up recovery and periodic maintenance, done while holding the lock.

- Everything in `active/` belonged to a runner that died: it goes to
  `deferred/`, due now, with the recovery counted in its state. An entry
  recovered 3 times goes to `hold/` ("interrupted delivery 3 times"), so a
  message that crashes the runner cannot cause a mail flood.
- Files in `tmp/` whose writer is gone are reclaimed at once (see
  [`sweep_tmp`]): the helper holds a lock on its file while it writes, and
  the kernel drops it when the helper dies. A file nobody can lock (not a
  regular file, or one that cannot be opened) goes after `tmp_max_age`.
- Entries in `failed/` older than `failed_max_age` are removed and logged.
- State files whose entry is nowhere are removed and logged.
*/
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{Mode, fstat};

use crate::logging;
use crate::queue::state::State;
use crate::queue::store::{Queue, Store, now};
use crate::runner::Settings;

/// Recoveries after which an entry is held instead of retried.
pub const MAX_RECOVERIES: u32 = 3;

/// Recover `active/`. Returns how many entries were moved.
pub fn recover_active(store: &Store, s: &Settings) -> usize {
    let names = store.list(Queue::Active).unwrap_or_default();
    let mut moved = 0;
    for name in names {
        if outq_spool::queue_id::QueueId::parse(&name).is_none() {
            quarantine(store, Queue::Active, &name, "not a queue ID");
            continue;
        }
        let mut state = match store.read_state(&name) {
            Ok(Some(st)) => st,
            Ok(None) => match super::load(store, s, Queue::Active, &name) {
                Some(entry) => State::fresh(&entry.parsed.header.recipients),
                None => continue,
            },
            Err(e) => {
                logging::warning(&format!("{name}: unreadable state ({e}); quarantined"));
                quarantine(store, Queue::Active, &name, "unreadable state");
                continue;
            }
        };
        match store.take_request(&name) {
            Some(crate::queue::store::Request::Delete) => {
                let _ = store.unlink(Queue::Active, &name);
                let _ = store.remove_state(&name);
                logging::info(&format!("{name}: deleted by the operator (requested during an interrupted attempt)"));
                continue;
            }
            Some(crate::queue::store::Request::Hold) => state.hold = Some("held by the operator".into()),
            None => {}
        }
        state.recoveries = state.recoveries.saturating_add(1);
        state.next_attempt = now();
        let interrupted = |n: u32| format!("interrupted delivery {n} times");
        let to = if state.hold.as_deref().is_some_and(|h| h.starts_with("interrupted delivery")) {
            // A previous recovery died between writing the hold and moving
            // the entry: keep the count and the reason in step.
            state.hold = Some(interrupted(state.recoveries));
            Queue::Hold
        } else if state.hold.is_some() {
            Queue::Hold
        } else if state.recoveries >= MAX_RECOVERIES {
            state.hold = Some(interrupted(state.recoveries));
            Queue::Hold
        } else {
            Queue::Deferred
        };
        if store.write_state(&name, &state).is_ok() && store.rename(Queue::Active, to, &name).is_ok() {
            moved += 1;
            logging::info(&format!("{name}: recovered from an interrupted delivery, moved to {}/", to.name()));
        } else {
            logging::warning(&format!("{name}: cannot recover from active/"));
        }
    }
    moved
}

/// Move a bad file to `corrupt/` and say why.
pub fn quarantine(store: &Store, from: Queue, name: &str, why: &str) {
    let shown = outq_spool::log::escape(name.as_bytes());
    match store.quarantine(from, name) {
        Ok(to) => logging::warning(&format!(
            "{shown}: moved from {}/ to corrupt/{}: {why}",
            from.name(),
            outq_spool::log::escape(to.as_bytes())
        )),
        Err(e) => logging::warning(&format!("{shown}: cannot quarantine ({}): {why}", e.desc())),
    }
}

/// Remove old uncommitted files, old failures and orphan state files.
pub fn sweep(store: &Store, s: &Settings) {
    let t = now();
    let old = |q: Queue, name: &str, max: u64| -> bool {
        store.stat(q, name).map(|st| t.saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0)) > max).unwrap_or(false)
    };
    sweep_tmp(store, s);
    for name in store.list(Queue::Failed).unwrap_or_default() {
        // Age counts from the failure: the state file's mtime is set then.
        let failed_at = store.due_time(&name);
        let too_old = match failed_at {
            Some(at) => t.saturating_sub(at) > s.runner.failed_max_age.as_secs(),
            None => old(Queue::Failed, &name, s.runner.failed_max_age.as_secs()),
        };
        if too_old && store.unlink(Queue::Failed, &name).is_ok() {
            let _ = store.remove_state(&name);
            logging::info(&format!(
                "{}: removed from failed/ (older than failed_max_age)",
                outq_spool::log::escape(name.as_bytes())
            ));
        }
    }
    let mut present: HashSet<String> = HashSet::new();
    for q in [Queue::Active, Queue::Deferred, Queue::Hold, Queue::Failed, Queue::Corrupt, Queue::New] {
        present.extend(store.list(q).unwrap_or_default());
    }
    for name in store.list_states().unwrap_or_default() {
        if name.starts_with('.') {
            // A state write interrupted by a crash.
            if old_state(store, &name, t) {
                let _ = store.remove_state(&name);
            }
            continue;
        }
        let entry_name = name.strip_suffix(crate::queue::store::REQUEST_SUFFIX).unwrap_or(&name);
        // The listing above is not atomic: an operator command may have
        // moved the entry from a queue not yet listed to one already
        // listed. Every such move writes the state first, so a state file
        // changed within the hour is never taken for an orphan; and the
        // entry is looked for again just before removing.
        let orphan = !present.contains(entry_name) && old_state(store, &name, t) && !exists_anywhere(store, entry_name);
        if orphan && store.remove_state(&name).is_ok() {
            logging::info(&format!("{}: removed orphan state file", outq_spool::log::escape(name.as_bytes())));
        }
    }
}

/// Whether an entry named `name` is in any queue right now.
fn exists_anywhere(store: &Store, name: &str) -> bool {
    [Queue::New, Queue::Corrupt, Queue::Failed, Queue::Hold, Queue::Deferred, Queue::Active]
        .iter()
        .any(|&q| store.stat(q, name).is_ok())
}

/// Whether a state file was last written more than an hour ago. Its ctime
/// says when (its mtime is the next attempt, which may be any time).
fn old_state(store: &Store, name: &str, now: u64) -> bool {
    store.state_ctime(name).is_some_and(|c| now.saturating_sub(c) > 3600)
}

/// A file younger than this is left alone even when unlocked: a helper
/// locks its file right after creating it, and this closes that instant.
const TMP_GRACE_SECS: u64 = 2;

/// What [`sweep_tmp`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TmpSweep {
    pub removed: usize,
    pub bytes: u64,
    pub committed: usize,
}

/// What one file in `tmp/` is.
enum TmpFile {
    /// Being written: its writer holds the lock, or it is too new to say.
    Live,
    /// A complete entry whose rename into `new/` was lost (a power cut
    /// after the helper's commit): it belongs in `new/`.
    Complete,
    /// Its writer is gone and it is not a complete entry.
    Abandoned { bytes: u64, uid: u32 },
    /// Not a file a writer could lock: removed only after `tmp_max_age`.
    Unlockable,
}

fn classify_tmp(store: &Store, s: &Settings, name: &str, t: u64) -> (TmpFile, Option<Flock<File>>) {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match openat(store.dir(Queue::Tmp).as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return (TmpFile::Live, None), // committed meanwhile
        Err(_) => return (TmpFile::Unlockable, None),
    };
    let Ok(st) = fstat(fd.as_fd()) else { return (TmpFile::Unlockable, None) };
    if !outq_spool::fs::is_regular(&st) {
        return (TmpFile::Unlockable, None);
    }
    let changed = u64::try_from(st.st_mtime.max(st.st_ctime)).unwrap_or(0);
    if t.saturating_sub(changed) < TMP_GRACE_SECS {
        return (TmpFile::Live, None);
    }
    let lock = match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => return (TmpFile::Live, None),
        Err(_) => return (TmpFile::Unlockable, None),
    };
    if crate::queue::validate::load(store, Queue::Tmp, name, &s.limits).is_ok() {
        return (TmpFile::Complete, Some(lock));
    }
    let bytes = u64::try_from(st.st_size).unwrap_or(0);
    (TmpFile::Abandoned { bytes, uid: st.st_uid }, Some(lock))
}

/// Reclaim `tmp/`: remove every file whose writer is dead (its lock can be
/// taken), whatever its age; move a complete entry to `new/`; leave live
/// writers alone. Each removal is logged with its reason.
pub fn sweep_tmp(store: &Store, s: &Settings) -> TmpSweep {
    let t = now();
    let mut done = TmpSweep::default();
    for name in store.list(Queue::Tmp).unwrap_or_default() {
        let shown = outq_spool::log::escape(name.as_bytes());
        let (kind, lock) = classify_tmp(store, s, &name, t);
        match kind {
            TmpFile::Live => {}
            TmpFile::Complete => {
                if store.rename(Queue::Tmp, Queue::New, &name).is_ok()
                    && store.sync(Queue::New).is_ok()
                    && store.sync(Queue::Tmp).is_ok()
                {
                    done.committed += 1;
                    logging::warning(&format!(
                        "{shown}: complete entry found in tmp/ (its commit was interrupted): moved to new/"
                    ));
                }
            }
            TmpFile::Abandoned { bytes, uid } => {
                // Removed while we hold the lock: no writer can come back.
                if store.unlink(Queue::Tmp, &name).is_ok() {
                    done.removed += 1;
                    done.bytes = done.bytes.saturating_add(bytes);
                    logging::info(&format!(
                        "{shown}: removed from tmp/: its writer (uid {uid}) is gone without committing ({bytes} bytes)"
                    ));
                }
            }
            TmpFile::Unlockable => {
                let age =
                    store.stat(Queue::Tmp, &name).map(|st| t.saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0)));
                if age.is_ok_and(|a| a > s.runner.tmp_max_age.as_secs()) && store.unlink(Queue::Tmp, &name).is_ok() {
                    done.removed += 1;
                    logging::info(&format!("{shown}: removed from tmp/: not a lockable file, older than tmp_max_age"));
                }
            }
        }
        drop(lock);
    }
    if done.removed > 0 {
        let _ = store.sync(Queue::Tmp);
        logging::info(&format!("tmp/: reclaimed {} abandoned file(s), {} bytes", done.removed, done.bytes));
    }
    done
}
