/*!
The spool as the runner holds it: a descriptor per queue directory, opened
once with `O_NOFOLLOW` and verified against `outq_spool::layout`, and the
operations on entries that are all renames within one filesystem.
*/
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
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

/// The open spool.
#[derive(Debug)]
pub struct Store {
    pub root: PathBuf,
    root_fd: OwnedFd,
    dirs: Vec<OwnedFd>,
    state: OwnedFd,
    /// The helper's group: every entry in `new/` must have it.
    pub drop_gid: Gid,
}

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
        Ok(Store { root: root.to_path_buf(), root_fd, dirs, state, drop_gid })
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
    pub fn rename(&self, from: Queue, to: Queue, name: &str) -> Result<(), Errno> {
        renameat2(self.dir(from).as_fd(), name, self.dir(to).as_fd(), name, RenameFlags::RENAME_NOREPLACE)
    }

    /// Move `name` to `corrupt/`, adding `.1`, `.2`, ... if the name is taken.
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
                Ok(()) => return Ok(target),
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

    /// Replace the state of `id` durably: temporary file, mtime set to the
    /// next attempt, fsync, rename, fsync of `state/`.
    pub fn write_state(&self, id: &str, state: &State) -> Result<(), Errno> {
        let tmp = format!(".{id}.tmp");
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.state.as_fd(), tmp.as_str(), flags, Mode::from_bits_truncate(0o600))?;
        let mut f = File::from(fd);
        f.write_all(state.encode().as_bytes()).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(5)))?;
        let t = TimeSpec::new(i64::try_from(state.next_attempt).unwrap_or(i64::MAX), 0);
        futimens(f.as_fd(), &t, &t)?;
        fsync(f.as_fd())?;
        nix::fcntl::renameat(self.state.as_fd(), tmp.as_str(), self.state.as_fd(), id)?;
        fsync(self.state.as_fd())
    }

    /// Set the next attempt of `id` to `when` (mtime only; `outq flush`).
    pub fn set_due(&self, id: &str, when: u64) -> Result<(), Errno> {
        let fd = openat(self.state.as_fd(), id, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
        let t = TimeSpec::new(i64::try_from(when).unwrap_or(i64::MAX), 0);
        futimens(fd.as_fd(), &t, &t)
    }

    /// Record an operator's request for an entry in `active/`.
    pub fn write_request(&self, id: &str, req: Request) -> Result<(), Errno> {
        let name = format!("{id}{REQUEST_SUFFIX}");
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.state.as_fd(), name.as_str(), flags, Mode::from_bits_truncate(0o600))?;
        let mut f = File::from(fd);
        f.write_all(format!("{}\n", req.word()).as_bytes())
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(5)))?;
        fsync(f.as_fd())
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

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
