/*!
Start-up recovery and periodic maintenance, done while holding the lock.

- One file under two queue names is a rename a crash interrupted (a file
  system without a journal can leave both names): the later stage is kept
  and the earlier name removed ([`resolve_double_names`]).
- Everything in `active/` belonged to a runner that died: it goes to
  `deferred/`, due now, with the recovery counted in its state. An entry
  recovered 3 times goes to `hold/` ("interrupted delivery 3 times"), so a
  message that crashes the runner cannot cause a mail flood. An attempt cut
  short by a reboot (the entry went into `active/` before this boot) is
  not counted: a power cut is not the message's fault, and counting it
  would hold mail after three power cuts. Nor is one that was claimed but
  still waiting for a delivery thread ([`possibly_attempted`]): only an
  attempt under way can have made the runner die.
- Files in `tmp/` (see [`sweep_tmp`]): the helper holds an exclusive
  `flock` on its file for as long as it lives, and the kernel releases it
  when the helper dies. A file whose lock can be taken has no writer any
  more: a complete, committed entry (mode 0404, trailer intact) is a
  submission whose rename into `new/` was lost, and is moved to `new/`;
  anything else is a write its helper never finished, and is removed at
  once, whatever its age. A file whose writer still holds its lock is left
  alone until `tmp_max_age` (a helper stopped with `SIGSTOP` must not hold
  its space for ever). See [`classify_tmp`].
- Entries in `failed/` older than `failed_max_age` are removed.
- State files whose entry is nowhere, and temporary state files left by a
  crash, are removed.

Every removal is logged with its reason. Every move is durable
(directories flushed) before the next step relies on it.
*/
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use outq_spool::entry::Limits;
use outq_spool::log::escape;

use crate::logging;
use crate::queue::state::State;
use crate::queue::store::{Queue, Store, now};
use crate::queue::validate;
use crate::runner::Settings;

/// When this runner started (its recovery of `active/`): a state file
/// last written before that and whose entry is nowhere was left by a
/// crash, not by a command still at work.
static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Recoveries after which an entry is held instead of retried.
pub const MAX_RECOVERIES: u32 = 3;

/// Recover `active/`. Returns how many entries were moved.
pub fn recover_active(store: &Store, s: &Settings) -> usize {
    let _ = STARTED.set(SystemTime::now());
    resolve_double_names(store);
    let booted = boot_time();
    let names = store.list(Queue::Active).unwrap_or_default();
    let attempted = possibly_attempted(store, &names, s.runner.connections);
    let mut moved = 0;
    for name in names {
        if outq_spool::queue_id::QueueId::parse(&name).is_none() {
            quarantine(store, Queue::Active, &name, "not a queue ID");
            continue;
        }
        // Entered active/ (rename sets the ctime) before this boot?
        let rebooted = store.stat(Queue::Active, &name).is_ok_and(|st| before_boot(st.st_ctime, booted));
        let Some(entry) = super::load(store, s, Queue::Active, &name) else { continue };
        let mut state = store.entry_state(&name, &entry.parsed.header.recipients);
        match store.take_request(&name) {
            Some(crate::queue::store::Request::Delete) => {
                if store.unlink_durably(Queue::Active, &name).is_ok() {
                    let _ = store.remove_state(&name);
                    logging::info(&format!(
                        "{name}: deleted by the operator (requested during an interrupted attempt)"
                    ));
                }
                continue;
            }
            Some(crate::queue::store::Request::Hold) => state.hold = Some("held by the operator".into()),
            None => {}
        }
        let counted = !rebooted && attempted.contains(&name);
        if counted {
            state.recoveries = state.recoveries.saturating_add(1);
        }
        state.next_attempt = now();
        let to = next_place(&mut state);
        if store.write_state(&name, &state).is_ok() && store.rename_durably(Queue::Active, to, &name).is_ok() {
            moved += 1;
            let why = match (rebooted, counted) {
                (true, _) => " (cut short by a reboot: not counted)",
                (false, false) => " (claimed, not yet attempted: not counted)",
                (false, true) => "",
            };
            logging::info(&format!("{name}: recovered from an interrupted delivery{why}, moved to {}/", to.name()));
        } else {
            logging::warning(&format!("{name}: cannot recover from active/; tried again at the next queue run"));
        }
    }
    moved
}

/// The entries of `active/` (`names`) whose delivery may have started
/// when the runner died: the `connections` first claimed. A runner hands
/// its claimed entries to its delivery threads in the order it moved them
/// into `active/`, and each thread takes the next as it frees up, so the
/// attempts under way are always among the earliest claims still there;
/// the later ones were waiting for a thread and cannot have made it die.
/// The order of the claims is that of the renames, which set each
/// entry's change time; entries that share the last change time counted
/// are all counted.
fn possibly_attempted(store: &Store, names: &[String], connections: usize) -> HashSet<String> {
    let mut claimed: Vec<((i64, i64), &String)> = names
        .iter()
        .filter_map(|n| store.stat(Queue::Active, n).ok().map(|st| ((st.st_ctime, st.st_ctime_nsec), n)))
        .collect();
    claimed.sort();
    let Some(&(last, _)) = claimed.get(connections.max(1) - 1) else {
        return names.iter().cloned().collect();
    };
    claimed.into_iter().filter(|(at, _)| *at <= last).map(|(_, n)| n.clone()).collect()
}

/// Where a recovered entry goes, with its hold reason kept in step.
fn next_place(state: &mut State) -> Queue {
    let interrupted = |n: u32| format!("interrupted delivery {n} times");
    if state.hold.as_deref().is_some_and(|h| h.starts_with("interrupted delivery")) {
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
    }
}

/// Whether a change at `ctime` happened before the boot at `booted`. The
/// interruption count of a recovered entry grows only when it did not: a
/// runner that died while the system ran, perhaps because of this very
/// message. An unknown boot time counts every interruption.
fn before_boot(ctime: i64, booted: Option<u64>) -> bool {
    booted.is_some_and(|b| u64::try_from(ctime).is_ok_and(|c| c < b))
}

/// When this system booted (seconds since the epoch), from `/proc/stat`.
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// How far along its way an entry in `q` is: of two names of one file,
/// the one with the higher stage is where the interrupted rename went.
/// `None` for the queues an entry can move between both ways.
fn stage(q: Queue) -> Option<u8> {
    match q {
        Queue::Tmp => Some(0),
        Queue::New => Some(1),
        Queue::Active => Some(2),
        Queue::Deferred | Queue::Hold | Queue::Failed => None,
        Queue::Corrupt => Some(4),
    }
}

/// Of the places an entry is in, the one it was being moved to.
fn later_place(store: &Store, name: &str, places: &[Queue]) -> Option<Queue> {
    if let Some(q) = places.iter().copied().filter(|&q| stage(q).is_some()).max_by_key(|&q| stage(q)) {
        if q == Queue::Corrupt || places.iter().all(|&p| stage(p).is_some()) {
            return Some(q);
        }
    }
    // Between deferred/, hold/ and failed/ (release, hold, requeue), and
    // from active/ to any of them: every such move writes the state
    // first, so the state says where the entry was going.
    let st = store.read_state(name).ok().flatten();
    let held = st.as_ref().is_some_and(|s| s.hold.is_some());
    let pending = st.as_ref().is_none_or(|s| s.pending().next().is_some());
    let want = if held {
        Queue::Hold
    } else if pending {
        Queue::Deferred
    } else {
        Queue::Failed
    };
    if places.contains(&want) {
        return Some(want);
    }
    [Queue::Hold, Queue::Failed, Queue::Deferred].into_iter().find(|q| places.contains(q))
}

/// Find every file that has two queue names (the same inode) and remove
/// the earlier name: a rename that a crash left half done.
pub fn resolve_double_names(store: &Store) {
    let mut seen: HashMap<String, Vec<Queue>> = HashMap::new();
    for q in Queue::ALL {
        for name in store.list(q).unwrap_or_default() {
            seen.entry(name).or_default().push(q);
        }
    }
    for (name, queues) in seen.into_iter().filter(|(_, qs)| qs.len() > 1) {
        let Some(keep) = later_place(store, &name, &queues) else { continue };
        for q in queues.into_iter().filter(|&q| q != keep) {
            // Only a file with two links is one file under two names; a
            // file that merely moved while the queues were listed has one.
            let same = match (store.stat(keep, &name), store.stat(q, &name)) {
                (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev && b.st_nlink >= 2,
                _ => false,
            };
            if same && store.unlink_durably(q, &name).is_ok() {
                logging::warning(&format!(
                    "{}: removed from {}/: the same file is in {}/ (a rename interrupted by a crash)",
                    escape(name.as_bytes()),
                    q.name(),
                    keep.name()
                ));
            }
        }
    }
}

/// Move a bad file to `corrupt/` and say why, in the log and in the
/// state file of its name there, so that `outq list` and `outq show` give
/// the reason even when the file looks valid by the time they read it.
pub fn quarantine(store: &Store, from: Queue, name: &str, why: &str) {
    let shown = escape(name.as_bytes());
    match store.quarantine(from, name) {
        Ok(to) => {
            logging::warning(&format!(
                "{shown}: moved from {}/ to corrupt/{}: {why}",
                from.name(),
                escape(to.as_bytes())
            ));
            record_quarantine(store, name, &to, why);
        }
        Err(e) => logging::warning(&format!("{shown}: cannot quarantine ({}): {why}", e.desc())),
    }
}

/// Write the reason of a quarantine into `state/TO`, keeping what the
/// state of `name` says about its recipients (a requeue must not send
/// again what was delivered). Nothing is written when another queue still
/// holds an entry of that name (a duplicate ID from `tmp/`): that state
/// is the other entry's.
fn record_quarantine(store: &Store, name: &str, to: &str, why: &str) {
    let live = [Queue::New, Queue::Active, Queue::Deferred, Queue::Hold, Queue::Failed];
    if to == name && live.iter().any(|&q| store.stat(q, name).is_ok()) {
        return;
    }
    let mut state = store.read_state(name).ok().flatten().unwrap_or_else(|| State::fresh(&[]));
    state.last_error = format!("quarantined: {why}");
    if state.next_attempt == 0 {
        state.next_attempt = now();
    }
    if let Err(e) = store.write_state(to, &state) {
        logging::warning(&format!(
            "{}: cannot record the reason of its quarantine: {}",
            escape(to.as_bytes()),
            e.desc()
        ));
    }
}

/// Resolve interrupted renames, recover stranded entries from `tmp/`,
/// remove old uncommitted files, old failures and orphan state files.
pub fn sweep(store: &Store, s: &Settings) {
    resolve_double_names(store);
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
        if too_old && store.unlink_durably(Queue::Failed, &name).is_ok() {
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
            if old_state(store, &name, t) && store.remove_state(&name).is_ok() {
                logging::info(&format!(
                    "{}: removed from state/: a temporary state file a crash left behind",
                    escape(name.as_bytes())
                ));
            }
            continue;
        }
        let entry_name = name.strip_suffix(crate::queue::store::REQUEST_SUFFIX).unwrap_or(&name);
        // The listing above is not atomic: an operator command may have
        // moved the entry from a queue not yet listed to one already
        // listed. Every such move writes the state first, so a state file
        // changed within the hour is never taken for an orphan; and the
        // entry is looked for again just before removing.
        let orphan = !present.contains(entry_name)
            && (old_state(store, &name, t) || written_before_start(store, &name))
            && !exists_anywhere(store, entry_name);
        if orphan && store.remove_state(&name).is_ok() {
            logging::info(&format!("{}: removed orphan state file", outq_spool::log::escape(name.as_bytes())));
        }
    }
}

/// What a file in `tmp/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmpFile {
    /// The same file is already in `new/`: only the `tmp/` name is left
    /// of a rename that a crash interrupted.
    AlreadyInNew,
    /// A complete entry, as the helper leaves it just before its rename
    /// (valid header, mode 0404, trailer intact, one link): the submission
    /// was committed but its rename was lost (or never made).
    Committed,
    /// Anything else: a write in progress or one its writer abandoned.
    Uncommitted,
}

/// Classify a file in `tmp/` by its contents alone (not by its age, nor by
/// whether its writer still runs: the caller decides that).
pub fn classify_tmp(store: &Store, limits: &Limits, name: &str) -> TmpFile {
    if let (Ok(a), Ok(b)) = (store.stat(Queue::Tmp, name), store.stat(Queue::New, name)) {
        if a.st_ino == b.st_ino && a.st_dev == b.st_dev {
            return TmpFile::AlreadyInNew;
        }
    }
    match validate::load(store, Queue::Tmp, name, limits) {
        Ok(_) => TmpFile::Committed,
        Err(_) => TmpFile::Uncommitted,
    }
}

/// Seconds after its last change before a committed-looking file in
/// `tmp/` that cannot be locked is taken for stranded (a file a helper
/// wrote can always be locked; this covers the others). A file last
/// changed before this boot is stranded at once (no writer survives a
/// reboot).
const TMP_COMMITTED_GRACE: u64 = 300;

/// A file changed less than this long ago is left for the next pass even
/// when its lock is free: a helper locks its file just after creating it,
/// and this covers that instant.
const TMP_LOCK_GRACE: u64 = 2;

/// Whether the writer of `tmp/NAME` is still there.
enum Writer {
    /// Gone: its lock is ours until this is dropped.
    Gone { _lock: Flock<File> },
    /// Holds its lock, or the file is too new to tell.
    Alive,
    /// The file cannot be opened or locked: not a regular file, or (in a
    /// development spool whose owner is in the helper's group) not
    /// readable by the queue owner.
    Unknown,
}

fn writer_of(store: &Store, name: &str, changed: u64, t: u64) -> Writer {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let Ok(fd) = openat(store.dir(Queue::Tmp).as_fd(), name, flags, Mode::empty()) else { return Writer::Unknown };
    if !fstat(fd.as_fd()).is_ok_and(|st| outq_spool::fs::is_regular(&st)) {
        return Writer::Unknown;
    }
    if t.saturating_sub(changed) < TMP_LOCK_GRACE {
        return Writer::Alive;
    }
    match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Writer::Gone { _lock: lock },
        Err((_, Errno::EWOULDBLOCK)) => Writer::Alive,
        Err(_) => Writer::Unknown,
    }
}

/// What [`sweep_tmp`] reclaimed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TmpSweep {
    pub removed: usize,
    pub bytes: u64,
}

/// Reclaim `tmp/` (see the module's documentation); every removal and move
/// is logged with its reason.
pub fn sweep_tmp(store: &Store, s: &Settings) -> TmpSweep {
    let t = now();
    let mut done = TmpSweep::default();
    for name in store.list(Queue::Tmp).unwrap_or_default() {
        if let Some(bytes) = sweep_tmp_file(store, s, &name, t) {
            done.removed += 1;
            done.bytes = done.bytes.saturating_add(bytes);
        }
    }
    if done.removed > 0 {
        logging::info(&format!("tmp/: reclaimed {} abandoned file(s), {} bytes", done.removed, done.bytes));
    }
    done
}

/// One file of `tmp/`; the bytes it freed when it was removed.
fn sweep_tmp_file(store: &Store, s: &Settings, name: &str, t: u64) -> Option<u64> {
    let shown = escape(name.as_bytes());
    let st = store.stat(Queue::Tmp, name).ok()?;
    let changed = u64::try_from(st.st_mtime).unwrap_or(0);
    let age = t.saturating_sub(changed);
    let bytes = u64::try_from(st.st_size).unwrap_or(0);
    let kind = classify_tmp(store, &s.limits, name);
    if kind == TmpFile::AlreadyInNew {
        if store.unlink_durably(Queue::Tmp, name).is_ok() {
            logging::info(&format!("{shown}: removed from tmp/: the same file is in new/ (interrupted rename)"));
        }
        return None;
    }
    // Held until the end of this function: no writer can come back.
    let writer = writer_of(store, name, changed, t);
    match (kind, &writer) {
        (TmpFile::Committed, Writer::Alive) => None,
        (TmpFile::Committed, Writer::Unknown)
            if !before_boot(st.st_mtime, boot_time()) && age <= TMP_COMMITTED_GRACE =>
        {
            None
        }
        (TmpFile::Committed, _) => {
            match store.rename_durably(Queue::Tmp, Queue::New, name) {
                Ok(()) => logging::warning(&format!(
                    "{shown}: moved from tmp/ to new/: a complete entry whose commit (rename) was lost"
                )),
                Err(Errno::EEXIST) => quarantine(store, Queue::Tmp, name, "a complete entry whose ID is taken in new/"),
                Err(e) => logging::warning(&format!("{shown}: cannot move from tmp/ to new/: {}", e.desc())),
            }
            None
        }
        (_, Writer::Gone { .. }) => {
            store.unlink_durably(Queue::Tmp, name).ok()?;
            logging::info(&format!(
                "{shown}: removed from tmp/: never committed; its writer (uid {}) is gone ({bytes} bytes)",
                st.st_uid
            ));
            Some(bytes)
        }
        (_, Writer::Alive | Writer::Unknown) if age > s.runner.tmp_max_age.as_secs() => {
            store.unlink_durably(Queue::Tmp, name).ok()?;
            let why = if matches!(writer, Writer::Alive) { "its writer still holds it" } else { "not lockable" };
            logging::info(&format!("{shown}: removed from tmp/: never committed, {why}, older than tmp_max_age"));
            Some(bytes)
        }
        _ => None,
    }
}

/// Whether an entry named `name` is in any queue right now. The queues
/// are looked at twice, in opposite orders: an entry moved once while
/// they are looked at is found by the second look.
fn exists_anywhere(store: &Store, name: &str) -> bool {
    let order = [Queue::New, Queue::Corrupt, Queue::Failed, Queue::Hold, Queue::Deferred, Queue::Active];
    order.iter().any(|&q| store.stat(q, name).is_ok()) || order.iter().rev().any(|&q| store.stat(q, name).is_ok())
}

/// Whether a state file was last changed before this runner started.
fn written_before_start(store: &Store, name: &str) -> bool {
    let Some(start) = STARTED.get() else { return false };
    store.state_changed(name).is_some_and(|(sec, nsec)| {
        let at = UNIX_EPOCH + Duration::new(u64::try_from(sec).unwrap_or(0), u32::try_from(nsec).unwrap_or(0));
        at < *start
    })
}

/// Whether a state file was last written more than an hour ago. Its ctime
/// says when (its mtime is the next attempt, which may be any time).
fn old_state(store: &Store, name: &str, now: u64) -> bool {
    store.state_ctime(name).is_some_and(|c| now.saturating_sub(c) > 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interruptions_within_this_boot_count() {
        assert!(before_boot(99, Some(100)));
        assert!(!before_boot(100, Some(100)));
        assert!(!before_boot(150, Some(100)));
        assert!(!before_boot(-1, Some(100)));
        assert!(!before_boot(50, None));
        assert!(boot_time().is_some_and(|b| b <= now()));
    }

    #[test]
    fn the_later_stage_of_a_half_done_rename_is_kept() {
        assert!(stage(Queue::Tmp) < stage(Queue::New));
        assert!(stage(Queue::New) < stage(Queue::Active));
        assert!(stage(Queue::Active) < stage(Queue::Corrupt));
        assert_eq!(stage(Queue::Hold), None);
    }

    #[test]
    fn recovery_holds_at_the_limit_and_keeps_the_reason_in_step() {
        let mut st = State::fresh(&[]);
        st.recoveries = MAX_RECOVERIES - 1;
        assert_eq!(next_place(&mut st), Queue::Deferred);
        st.recoveries = MAX_RECOVERIES;
        assert_eq!(next_place(&mut st), Queue::Hold);
        assert_eq!(st.hold.as_deref(), Some("interrupted delivery 3 times"));
        st.recoveries = 4;
        assert_eq!(next_place(&mut st), Queue::Hold);
        assert_eq!(st.hold.as_deref(), Some("interrupted delivery 4 times"));
    }
}
