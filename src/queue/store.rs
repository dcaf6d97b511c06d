/*!
The spool as the runner holds it: a descriptor per queue directory, opened
once with `O_NOFOLLOW` and verified against `outq_spool::layout`, and the
operations on entries that are all renames within one filesystem.

Durability lives here and nowhere else: [`Moves`] batches renames and
removals and flushes each changed directory once ([`DirSync`] shares one
`fsync` among every thread waiting on the same directory); state files
are published under a writer's own temporary name; delivered entries'
removals are settled in batches before their state files go.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fsync, geteuid, unlinkat};
use outq_spool::fs::{self, AncestorPolicy};
use outq_spool::layout::{self, GroupRole, Kind, PARTS};

use super::state::State;
use crate::error::Error;

/// A queue directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    Tmp,
    New,
    Active,
    Deferred,
    Hold,
    Failed,
    Corrupt,
}

impl Queue {
    pub const ALL: [Queue; 7] =
        [Queue::Tmp, Queue::New, Queue::Active, Queue::Deferred, Queue::Hold, Queue::Failed, Queue::Corrupt];

    pub fn name(self) -> &'static str {
        match self {
            Queue::Tmp => layout::TMP,
            Queue::New => layout::NEW,
            Queue::Active => layout::ACTIVE,
            Queue::Deferred => layout::DEFERRED,
            Queue::Hold => layout::HOLD,
            Queue::Failed => layout::FAILED,
            Queue::Corrupt => layout::CORRUPT,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An operator's request about an entry that is being delivered, carried
/// out by the runner when the attempt ends (`state/ID.request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Hold,
    Delete,
}

impl Request {
    pub fn word(self) -> &'static str {
        match self {
            Request::Hold => "hold",
            Request::Delete => "delete",
        }
    }
}

/// Suffix of request files in `state/`.
pub const REQUEST_SUFFIX: &str = ".request";

/// Group commit of one directory's changes: every change takes a ticket
/// after it is made; [`DirSync::sync`] returns once an `fsync` that began
/// after the change has finished. Threads that wait while another
/// thread's `fsync` runs share the next one, so a runner moving many
/// entries pays for far fewer `fsync` calls than moves.
#[derive(Debug, Default)]
pub struct DirSync {
    /// Tickets handed out (changes made).
    changed: AtomicU64,
    /// The highest ticket known to be on disk.
    synced: Mutex<u64>,
}

impl DirSync {
    /// Record a change already made; the ticket to wait for.
    pub fn changed(&self) -> u64 {
        self.changed.fetch_add(1, Ordering::SeqCst).saturating_add(1)
    }

    /// Make every change up to `ticket` durable.
    pub fn sync(&self, dir: &OwnedFd, ticket: u64) -> Result<(), Errno> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= ticket {
            return Ok(());
        }
        // Everything counted before the fsync starts is covered by it.
        let covered = self.changed.load(Ordering::SeqCst);
        fsync(dir.as_fd())?;
        *synced = covered.max(*synced);
        Ok(())
    }
}

/// Counter that makes each temporary name of this process unique.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The open spool.
#[derive(Debug)]
pub struct Store {
    pub root: PathBuf,
    root_fd: OwnedFd,
    dirs: Vec<OwnedFd>,
    state: OwnedFd,
    /// One group commit per queue directory (index as `dirs`), and the
    /// last one for `state/`.
    syncs: Vec<DirSync>,
    /// Delivered entries removed from `active/` whose removal is not yet
    /// known to be durable (their state files wait for it), with tickets.
    delivered: Mutex<Vec<(String, u64)>>,
    delivered_added: Condvar,
    /// The last descriptors of removed entries, closed by the settling
    /// thread (see [`Store::retire`]).
    retired: Mutex<Vec<std::fs::File>>,
    /// The helper's group: every entry in `new/` must have it.
    pub drop_gid: Gid,
}

/// Most descriptors of removed entries waiting for the settling thread to
/// close them (each is one open file of the runner's).
const MAX_RETIRED: usize = 64;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

fn sys(path: &str, what: &str, e: Errno) -> Error {
    Error::temp(format!("{path}: cannot {what}: {}", e.desc()), "check the spool with 'outq check'")
}

impl Store {
    /// Open `root` and verify every part of the layout: owned by us, with
    /// exactly the layout's modes. The runner refuses a spool it cannot
    /// trust rather than repairing it behind the administrator's back.
    pub fn open(root: &Path) -> Result<Store, Error> {
        let me = geteuid();
        let shown = root.display().to_string();
        let policy = AncestorPolicy { owners: vec![Uid::from_raw(0), me], allow_sticky: true };
        let (_, _) = fs::open_dir_path(root, &policy).map_err(|e| {
            Error::temp(format!("spool {e}"), "create it with 'outq init' and verify it with 'outq check'")
        })?;
        let root_fd = nix::fcntl::open(root, DIR_FLAGS, Mode::empty()).map_err(|e| sys(&shown, "open", e))?;
        let mut drop_gid = None;
        for part in PARTS.iter().filter(|p| p.kind == Kind::Dir) {
            let st = if part.name.is_empty() {
                fstat(root_fd.as_fd())
            } else {
                fstatat(root_fd.as_fd(), part.name, AtFlags::AT_SYMLINK_NOFOLLOW)
            };
            let path = if part.name.is_empty() { shown.clone() } else { format!("{shown}/{}", part.name) };
            let st = st.map_err(|e| sys(&path, "examine", e))?;
            let group = match part.group {
                GroupRole::Drop => {
                    drop_gid = Some(Gid::from_raw(st.st_gid));
                    None
                }
                GroupRole::Owner => None,
            };
            fs::require_dir(&path, &st, me, group, part.mode).map_err(|e| {
                Error::temp(format!("spool misconfigured: {e}"), "repair it with 'outq init' (as root)")
            })?;
        }
        let open_dir = |name: &str| -> Result<OwnedFd, Error> {
            openat(root_fd.as_fd(), name, DIR_FLAGS, Mode::empty())
                .map_err(|e| sys(&format!("{shown}/{name}"), "open", e))
        };
        let dirs = Queue::ALL.iter().map(|q| open_dir(q.name())).collect::<Result<Vec<_>, _>>()?;
        let state = open_dir(layout::STATE)?;
        let drop_gid = drop_gid.ok_or_else(|| Error::temp("spool has no new/ directory", "run 'outq init'"))?;
        let syncs = (0..=Queue::ALL.len()).map(|_| DirSync::default()).collect();
        Ok(Store {
            root: root.to_path_buf(),
            root_fd,
            dirs,
            state,
            syncs,
            delivered: Mutex::new(Vec::new()),
            delivered_added: Condvar::new(),
            retired: Mutex::new(Vec::new()),
            drop_gid,
        })
    }

    pub fn root_fd(&self) -> &OwnedFd {
        &self.root_fd
    }

    pub fn dir(&self, q: Queue) -> &OwnedFd {
        // Queue::ALL built `dirs` in index order, so every index exists.
        self.dirs.get(q.index()).unwrap_or(&self.root_fd)
    }

    /// The names in a queue directory (without `.` and `..`).
    ///
    /// Only our own names (queue IDs) are ever valid, and they are ASCII.
    /// A name that is not UTF-8 cannot be handled as text, so it is moved
    /// to `corrupt/` under a name of ours here, by its raw bytes.
    pub fn list(&self, q: Queue) -> Result<Vec<String>, Errno> {
        let fd = openat(self.dir(q).as_fd(), ".", DIR_FLAGS, Mode::empty())?;
        let mut dir = Dir::from_fd(fd)?;
        let mut names = Vec::new();
        let mut raw_names = Vec::new();
        for ent in dir.iter() {
            let ent = ent?;
            let name = ent.file_name();
            match name.to_bytes() {
                b"." | b".." => {}
                // The helper's per-account ledgers live in tmp/; they are
                // not entries (outq-spool(5)).
                bytes if q == Queue::Tmp && bytes.starts_with(outq_spool::layout::SHARE_LEDGER_PREFIX.as_bytes()) => {}
                bytes => match std::str::from_utf8(bytes) {
                    Ok(s) => names.push(s.to_owned()),
                    Err(_) => raw_names.push((name.to_owned(), ent.ino())),
                },
            }
        }
        for (raw, ino) in raw_names {
            let target = format!("non-utf8-name.{ino}");
            let done = renameat2(
                self.dir(q).as_fd(),
                raw.as_c_str(),
                self.dir(Queue::Corrupt).as_fd(),
                target.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            );
            if done.is_ok() {
                crate::logging::warning(&format!(
                    "{}: moved from {}/ to corrupt/{target}: the name is not UTF-8",
                    outq_spool::log::escape(raw.as_bytes()),
                    q.name()
                ));
            }
        }
        Ok(names)
    }

    /// `lstat` of a name in a queue.
    pub fn stat(&self, q: Queue, name: &str) -> Result<FileStat, Errno> {
        fstatat(self.dir(q).as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
    }

    /// Move `name` from one queue to another, never replacing anything.
    /// Not yet durable: see [`Store::rename_durably`] and [`Moves`].
    pub fn rename(&self, from: Queue, to: Queue, name: &str) -> Result<(), Errno> {
        renameat2(self.dir(from).as_fd(), name, self.dir(to).as_fd(), name, RenameFlags::RENAME_NOREPLACE)
    }

    /// Move `name` and make the move durable before returning: the
    /// destination directory is flushed (the new name survives) and the
    /// source too (the old name does not come back beside it, or instead
    /// of it, after a power cut on a file system that orders nothing).
    pub fn rename_durably(&self, from: Queue, to: Queue, name: &str) -> Result<(), Errno> {
        let mut moves = Moves::new(self);
        moves.rename(from, to, name)?;
        moves.commit()
    }

    /// Remove `name` from `q` durably (see [`Store::rename_durably`]).
    pub fn unlink_durably(&self, q: Queue, name: &str) -> Result<(), Errno> {
        let mut moves = Moves::new(self);
        moves.unlink(q, name)?;
        moves.commit()
    }

    /// Remove a delivered entry from `active/`. Its state file stays until
    /// [`Store::settle_delivered`] has made the removal durable: were the
    /// state removed first, or its removal reach the disk first, a crash
    /// would leave an entry with no record of its delivery, sent again in
    /// full.
    pub fn remove_delivered(&self, id: &str) -> Result<(), Errno> {
        self.unlink(Queue::Active, id)?;
        let ticket = self.changed(Some(Queue::Active));
        let mut pending = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        // The settling thread only waits on an empty list: a wake-up (a
        // system call) is only needed for the first.
        let first = pending.is_empty();
        pending.push((id.to_owned(), ticket));
        drop(pending);
        if first {
            self.delivered_added.notify_one();
        }
        Ok(())
    }

    /// Hand over the descriptor of an entry just removed, to be closed by
    /// the settling thread. Closing the last descriptor of a removed file
    /// is when the file system frees it (and, mounted with `discard`,
    /// waits for the device to discard its blocks): work that need not
    /// hold up a delivery thread. Past [`MAX_RETIRED`] waiting, the caller
    /// closes it itself.
    pub fn retire(&self, file: std::fs::File) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        if retired.len() < MAX_RETIRED {
            retired.push(file);
        }
    }

    /// Tell the settling thread, waiting in [`Store::settle_delivered`]
    /// with `stop`, to make its last pass now rather than after its wait.
    pub fn stop_settling(&self, stop: &AtomicBool) {
        let pending = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        stop.store(true, Ordering::SeqCst);
        drop(pending);
        self.delivered_added.notify_all();
    }

    /// Close the descriptors handed over by [`Store::retire`].
    fn close_retired(&self) {
        let files = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        drop(files);
    }

    /// Make the removals of delivered entries durable, all with one
    /// `fsync` of `active/`, then remove their state files. Waits up to
    /// `wait` for one to arrive; returns the IDs settled. Removals made
    /// while one `fsync` runs are all settled by the next, so the batch
    /// grows with the rate of deliveries and adds no delay.
    pub fn settle_delivered(&self, wait: Duration, stop: &AtomicBool) -> Result<Vec<String>, Errno> {
        let mut pending = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        // `stop` is read under the list's lock, as `stop_settling` sets
        // it: a stop never waits out `wait`.
        if pending.is_empty() && !wait.is_zero() && !stop.load(Ordering::SeqCst) {
            pending =
                self.delivered_added.wait_timeout(pending, wait).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        let batch = std::mem::take(&mut *pending);
        drop(pending);
        self.close_retired();
        let Some(ticket) = batch.iter().map(|(_, t)| *t).max() else { return Ok(Vec::new()) };
        self.sync_dir(Some(Queue::Active), ticket)?;
        let mut done = Vec::with_capacity(batch.len());
        for (id, _) in batch {
            let _ = self.remove_state(&id);
            done.push(id);
        }
        Ok(done)
    }

    /// Wait until the changes of directory `dir` (`None`: `state/`) up to
    /// `ticket` are on disk.
    fn sync_dir(&self, dir: Option<Queue>, ticket: u64) -> Result<(), Errno> {
        let i = dir.map(Queue::index).unwrap_or(Queue::ALL.len());
        let fd = dir.map(|q| self.dir(q)).unwrap_or(&self.state);
        match self.syncs.get(i) {
            Some(s) => s.sync(fd, ticket),
            None => fsync(fd.as_fd()),
        }
    }

    /// Count a change made in directory `dir` (`None`: `state/`).
    fn changed(&self, dir: Option<Queue>) -> u64 {
        let i = dir.map(Queue::index).unwrap_or(Queue::ALL.len());
        self.syncs.get(i).map(DirSync::changed).unwrap_or(u64::MAX)
    }

    /// Move `name` to `corrupt/` durably, adding `.1`, `.2`, ... if the
    /// name is taken.
    pub fn quarantine(&self, from: Queue, name: &str) -> Result<String, Errno> {
        let mut target = name.to_owned();
        for n in 1..1000 {
            match renameat2(
                self.dir(from).as_fd(),
                name,
                self.dir(Queue::Corrupt).as_fd(),
                target.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => {
                    let mut moves = Moves::new(self);
                    moves.touch(Some(Queue::Corrupt));
                    moves.touch(Some(from));
                    moves.commit()?;
                    return Ok(target);
                }
                Err(Errno::EEXIST) => target = format!("{name}.{n}"),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EEXIST)
    }

    pub fn unlink(&self, q: Queue, name: &str) -> Result<(), Errno> {
        unlinkat(self.dir(q).as_fd(), name, UnlinkatFlags::NoRemoveDir)
    }

    /// Flush a queue directory's changes (after a rename that must survive
    /// a crash).
    pub fn sync(&self, q: Queue) -> Result<(), Errno> {
        fsync(self.dir(q).as_fd())
    }

    /// The state of entry `id`, `None` when it has none.
    pub fn read_state(&self, id: &str) -> Result<Option<State>, String> {
        let fd = match openat(
            self.state.as_fd(),
            id,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(format!("cannot open state {id}: {}", e.desc())),
        };
        let st = fstat(fd.as_fd()).map_err(|e| e.desc().to_owned())?;
        if !fs::is_regular(&st) || st.st_uid != geteuid().as_raw() {
            return Err(format!("state {id} is not a regular file of ours"));
        }
        let text = fs::read_all(fd, 16 * 1024 * 1024).map_err(|e| e.to_string())?;
        let text = String::from_utf8(text).map_err(|_| format!("state {id} is not text"))?;
        State::parse(&text).map(Some).map_err(|e| format!("state {id}: {e}"))
    }

    /// The state of entry `id` reconciled with its recipients (see
    /// [`super::state::reconcile`]); whatever did not match is logged.
    pub fn entry_state(&self, id: &str, recipients: &[outq_spool::address::Mailbox]) -> State {
        let (state, notes) = super::state::reconcile(self.read_state(id), recipients);
        for n in notes {
            crate::logging::warning(&format!("{id}: {n}"));
        }
        state
    }

    /// The next-attempt time of `id` (its state file's mtime), without
    /// opening anything. `None` when there is no state file.
    pub fn due_time(&self, id: &str) -> Option<u64> {
        fstatat(self.state.as_fd(), id, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| u64::try_from(st.st_mtime).unwrap_or(0))
    }

    /// When a state file was last changed (ctime), for sweeping temporary
    /// files.
    pub fn state_ctime(&self, name: &str) -> Option<u64> {
        fstatat(self.state.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| u64::try_from(st.st_ctime).unwrap_or(0))
    }

    /// When a state file was last changed (ctime: seconds, nanoseconds).
    pub fn state_changed(&self, name: &str) -> Option<(i64, i64)> {
        fstatat(self.state.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok().map(|st| (st.st_ctime, st.st_ctime_nsec))
    }

    /// Replace the state of `id` durably: temporary file, mtime set to the
    /// next attempt, fsync, rename, fsync of `state/`.
    pub fn write_state(&self, id: &str, state: &State) -> Result<(), Errno> {
        self.publish(id, state.encode().as_bytes(), Some(state.next_attempt))
    }

    /// Write `state/NAME` atomically and durably. The temporary name is
    /// this writer's own (pid and a counter, created exclusively), so two
    /// writers (the runner and an operator command) never write into the
    /// same file: each publishes a whole file, or nothing.
    fn publish(&self, name: &str, bytes: &[u8], mtime: Option<u64>) -> Result<(), Errno> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".{name}.{}.{seq}.tmp", std::process::id());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.state.as_fd(), tmp.as_str(), flags, Mode::from_bits_truncate(0o600))?;
        let mut f = File::from(fd);
        let written = f
            .write_all(bytes)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(5)))
            .and_then(|()| match mtime {
                Some(m) => {
                    let t = TimeSpec::new(i64::try_from(m).unwrap_or(i64::MAX), 0);
                    futimens(f.as_fd(), &t, &t)
                }
                None => Ok(()),
            })
            .and_then(|()| fsync(f.as_fd()))
            .and_then(|()| nix::fcntl::renameat(self.state.as_fd(), tmp.as_str(), self.state.as_fd(), name));
        if let Err(e) = written {
            let _ = unlinkat(self.state.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        let ticket = self.changed(None);
        self.sync_dir(None, ticket)
    }

    /// Set the next attempt of `id` to `when` (mtime only; `outq flush`).
    /// Not yet durable: see [`Store::sync_states`].
    pub fn set_due(&self, id: &str, when: u64) -> Result<(), Errno> {
        let fd = openat(self.state.as_fd(), id, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
        let t = TimeSpec::new(i64::try_from(when).unwrap_or(i64::MAX), 0);
        futimens(fd.as_fd(), &t, &t)
    }

    /// Make every change to state files durable at once (`syncfs` of the
    /// spool's file system: one call however many files `outq flush`
    /// touched).
    pub fn sync_states(&self) -> Result<(), Errno> {
        nix::unistd::syncfs(self.state.as_fd())
    }

    /// Record an operator's request for an entry in `active/`, durably.
    pub fn write_request(&self, id: &str, req: Request) -> Result<(), Errno> {
        self.publish(&format!("{id}{REQUEST_SUFFIX}"), format!("{}\n", req.word()).as_bytes(), None)
    }

    /// Take (read and remove) the request for `id`, if any.
    pub fn take_request(&self, id: &str) -> Option<Request> {
        let name = format!("{id}{REQUEST_SUFFIX}");
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(self.state.as_fd(), name.as_str(), flags, Mode::empty()).ok()?;
        let text = fs::read_all(fd, 64).ok()?;
        let _ = unlinkat(self.state.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir);
        match text.as_slice() {
            b"hold\n" => Some(Request::Hold),
            b"delete\n" => Some(Request::Delete),
            _ => None,
        }
    }

    pub fn remove_state(&self, id: &str) -> Result<(), Errno> {
        match unlinkat(self.state.as_fd(), id, UnlinkatFlags::NoRemoveDir) {
            Err(Errno::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Names in `state/` (for removing orphans).
    pub fn list_states(&self) -> Result<Vec<String>, Errno> {
        let fd = openat(self.state.as_fd(), ".", DIR_FLAGS, Mode::empty())?;
        let mut dir = Dir::from_fd(fd)?;
        let mut names = Vec::new();
        for ent in dir.iter() {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        Ok(names)
    }
}

/// Renames and removals whose directory flushes are done together, once
/// per directory, by [`Moves::commit`]. Nothing that depends on a move
/// (a log line saying it happened, an operator's "done", removing a state
/// file) may happen before the commit returns.
#[derive(Debug)]
pub struct Moves<'a> {
    store: &'a Store,
    /// Directories changed (`None`: `state/`) and the last ticket of each.
    dirty: Vec<(Option<Queue>, u64)>,
}

impl<'a> Moves<'a> {
    pub fn new(store: &'a Store) -> Moves<'a> {
        Moves { store, dirty: Vec::new() }
    }

    fn touch(&mut self, dir: Option<Queue>) {
        let ticket = self.store.changed(dir);
        match self.dirty.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, t)) => *t = ticket,
            None => self.dirty.push((dir, ticket)),
        }
    }

    /// Rename without replacing; both directories are flushed at commit.
    pub fn rename(&mut self, from: Queue, to: Queue, name: &str) -> Result<(), Errno> {
        self.store.rename(from, to, name)?;
        self.touch(Some(to));
        self.touch(Some(from));
        Ok(())
    }

    /// Remove a name from a queue.
    pub fn unlink(&mut self, q: Queue, name: &str) -> Result<(), Errno> {
        self.store.unlink(q, name)?;
        self.touch(Some(q));
        Ok(())
    }

    /// Remove a state file (or request file), flushed at commit.
    pub fn remove_state(&mut self, name: &str) -> Result<(), Errno> {
        self.store.remove_state(name)?;
        self.touch(None);
        Ok(())
    }

    /// Whether anything waits for a commit.
    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Flush every changed directory (destinations first).
    pub fn commit(&mut self) -> Result<(), Errno> {
        let mut result = Ok(());
        for (dir, ticket) in std::mem::take(&mut self.dirty) {
            if let Err(e) = self.store.sync_dir(dir, ticket) {
                result = Err(e);
            }
        }
        result
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
