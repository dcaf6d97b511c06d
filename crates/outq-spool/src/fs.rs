/*!
File-descriptor based filesystem primitives that never follow a symbolic link.

A trusted directory path is opened in one `openat2` call from a descriptor
on `/`, with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`
(a symbolic link anywhere on the way is an error, never followed). The
directories above it are then checked through the descriptor itself, one
`fstatat(fd, "..", …)`, `fstatat(fd, "../..", …)`, … per level up to the
root: those are the directory's actual ancestors at the time of the check,
whatever happened to the names before, and once they are found owned by a
trusted user and not writable by others, nobody else can move the
directory any more. The last one must be the root itself, or the directory
was moved during the check.

Where `openat2` is missing (Linux before 5.6, or a filter that refuses it),
and whenever anything in that fast path fails, the path is walked from `/`
one component at a time with `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)`,
every directory checked on the descriptor just opened (`fstat`): the same
checks, one more system call or three per level, and the precise error.
`O_PATH` needs only search permission, which is all the helper has on
`tmp/` and `new/`.
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Gid, Uid};

/// A failed filesystem step, naming the path it concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub path: String,
    pub problem: Problem,
}

/// What was wrong with a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The path is not absolute or contains `.` / `..`.
    NotCanonical,
    /// A system call failed.
    Sys(Errno),
    /// A symbolic link where a directory or file was expected.
    Symlink,
    /// Not a directory (or not a regular file).
    WrongType,
    /// Owned by the wrong user.
    Owner { found: u32, expected: String },
    /// Belongs to the wrong group.
    Group { found: u32, expected: u32 },
    /// Mode bits differ from what is required.
    Mode { found: u32, expected: String },
    /// A file has more than one hard link.
    Links(u64),
    /// A file is larger than allowed.
    TooLarge(u64),
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.path;
        match &self.problem {
            Problem::NotCanonical => write!(f, "{p} is not an absolute path without '.' or '..'"),
            Problem::Sys(Errno::ENOENT) => write!(f, "{p} does not exist"),
            Problem::Sys(Errno::EACCES) => write!(f, "{p}: permission denied"),
            Problem::Sys(e) => write!(f, "{p}: {}", e.desc()),
            Problem::Symlink => write!(f, "{p} is a symbolic link"),
            Problem::WrongType => write!(f, "{p} is not of the expected file type"),
            Problem::Owner { found, expected } => write!(f, "{p} is owned by uid {found}, expected {expected}"),
            Problem::Group { found, expected } => write!(f, "{p} has group gid {found}, expected gid {expected}"),
            Problem::Mode { found, expected } => write!(f, "{p} has mode {found:04o}, expected {expected}"),
            Problem::Links(n) => write!(f, "{p} has {n} hard links, expected 1"),
            Problem::TooLarge(n) => write!(f, "{p} is too large ({n} bytes)"),
        }
    }
}

impl std::error::Error for FsError {}

impl FsError {
    pub fn new(path: impl Into<String>, problem: Problem) -> FsError {
        FsError { path: path.into(), problem }
    }

    pub fn sys(path: impl Into<String>, e: Errno) -> FsError {
        FsError::new(path, Problem::Sys(e))
    }

    /// The errno behind the failure, if it was a system call.
    pub fn errno(&self) -> Option<Errno> {
        match self.problem {
            Problem::Sys(e) => Some(e),
            _ => None,
        }
    }
}

/// Who may own, and who may write, the directories above a trusted file or
/// the spool.
#[derive(Debug, Clone)]
pub struct AncestorPolicy {
    /// Owners accepted for each directory on the way (always includes root).
    pub owners: Vec<Uid>,
    /// Accept a group- or world-writable directory if it has the sticky bit
    /// (`/tmp`): nobody can replace a name they do not own in it.
    pub allow_sticky: bool,
}

impl AncestorPolicy {
    /// Root only, no writable directory on the way (configuration files).
    pub fn root_only() -> AncestorPolicy {
        AncestorPolicy { owners: vec![Uid::from_raw(0)], allow_sticky: false }
    }

    pub fn check(&self, path: &str, st: &FileStat) -> Result<(), FsError> {
        let uid = Uid::from_raw(st.st_uid);
        if !self.owners.contains(&uid) {
            let expected = self.owners.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(" or uid ");
            return Err(FsError::new(path, Problem::Owner { found: st.st_uid, expected: format!("uid {expected}") }));
        }
        let mode = st.st_mode & 0o7777;
        let writable = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if writable && !(self.allow_sticky && sticky) {
            return Err(FsError::new(
                path,
                Problem::Mode { found: mode, expected: "no write permission for group or others".into() },
            ));
        }
        Ok(())
    }
}

const DIR_FLAGS: OFlag = OFlag::O_PATH.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

fn is_type(st: &FileStat, t: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == t
}

/// Open directory `path` (absolute), checking every directory from `/` down
/// to and including `path`'s parent against `policy`. The returned
/// descriptor is an `O_PATH` handle on `path` itself, not yet checked: the
/// caller knows what it must be.
pub fn open_dir_path(path: &Path, policy: &AncestorPolicy) -> Result<(OwnedFd, FileStat), FsError> {
    match open_dir_path_beneath(path, policy) {
        Some(found) => Ok(found),
        None => walk_dir_path(path, policy),
    }
}

/// The root directory, opened once per process.
struct Root {
    fd: OwnedFd,
    st: FileStat,
}

fn root() -> Option<&'static Root> {
    static ROOT: OnceLock<Option<Root>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let fd = nix::fcntl::open("/", DIR_FLAGS, Mode::empty()).ok()?;
        let st = fstat(&fd).ok()?;
        Some(Root { fd, st })
    })
    .as_ref()
}

/// The fast path: one `openat2` beneath `/`, then the ancestors checked
/// through `..` from the new descriptor. `None` when anything fails or
/// differs; the walk then gives the answer (and the precise error).
fn open_dir_path_beneath(path: &Path, policy: &AncestorPolicy) -> Option<(OwnedFd, FileStat)> {
    let mut names = Vec::new();
    for comp in path.components() {
        match comp {
            Component::RootDir if names.is_empty() => {}
            Component::Normal(n) => names.push(n),
            _ => return None,
        }
    }
    if !path.is_absolute() || names.is_empty() {
        return None;
    }
    let root = root()?;
    let relative: std::path::PathBuf = names.iter().collect();
    let how = OpenHow::new()
        .flags(DIR_FLAGS)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.fd.as_fd(), relative.as_path(), how).ok()?;
    let st = fstat(&fd).ok()?;
    // Parent first, the root last: "..", "../..", ...
    let mut up = String::new();
    for level in (0..names.len()).rev() {
        up.push_str(if up.is_empty() { ".." } else { "/.." });
        let ancestor = fstatat(fd.as_fd(), up.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let shown: std::path::PathBuf =
            std::iter::once(Component::RootDir.as_os_str()).chain(names.iter().take(level).copied()).collect();
        policy.check(&shown.display().to_string(), &ancestor).ok()?;
        if level == 0 && (ancestor.st_dev, ancestor.st_ino) != (root.st.st_dev, root.st.st_ino) {
            // Moved deeper since it was opened: walk the names instead.
            return None;
        }
    }
    Some((fd, st))
}

/// The portable path: walk from `/` one component at a time.
fn walk_dir_path(path: &Path, policy: &AncestorPolicy) -> Result<(OwnedFd, FileStat), FsError> {
    let shown = path.display().to_string();
    if !path.is_absolute() {
        return Err(FsError::new(shown, Problem::NotCanonical));
    }
    let mut fd = nix::fcntl::open("/", DIR_FLAGS, Mode::empty()).map_err(|e| FsError::sys("/", e))?;
    let mut st = fstat(&fd).map_err(|e| FsError::sys("/", e))?;
    let mut walked = String::new();
    for comp in path.components() {
        let name = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            _ => return Err(FsError::new(shown, Problem::NotCanonical)),
        };
        policy.check(if walked.is_empty() { "/" } else { &walked }, &st)?;
        walked.push('/');
        walked.push_str(&name.to_string_lossy());
        fd = open_child_dir(&fd, name, &walked)?;
        st = fstat(&fd).map_err(|e| FsError::sys(walked.clone(), e))?;
    }
    Ok((fd, st))
}

/// `openat(dir, name, O_PATH|O_DIRECTORY|O_NOFOLLOW)`, naming a symbolic link
/// as such.
pub fn open_child_dir<P: ?Sized + nix::NixPath>(dir: &impl AsFd, name: &P, shown: &str) -> Result<OwnedFd, FsError> {
    match openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOFOLLOW with O_DIRECTORY reports a symlink as ENOTDIR (or
        // ELOOP); look at the name itself to say which.
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            let is_link = nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map(|st| is_type(&st, SFlag::S_IFLNK))
                .unwrap_or(false);
            Err(FsError::new(shown, if is_link { Problem::Symlink } else { Problem::WrongType }))
        }
        Err(e) => Err(FsError::sys(shown, e)),
    }
}

/// Require a directory with exactly this owner, group and mode (including
/// the set-group-ID and sticky bits).
pub fn require_dir(path: &str, st: &FileStat, owner: Uid, group: Option<Gid>, mode: u32) -> Result<(), FsError> {
    if !is_type(st, SFlag::S_IFDIR) {
        return Err(FsError::new(path, Problem::WrongType));
    }
    if st.st_uid != owner.as_raw() {
        return Err(FsError::new(path, Problem::Owner { found: st.st_uid, expected: format!("uid {owner}") }));
    }
    if let Some(g) = group {
        if st.st_gid != g.as_raw() {
            return Err(FsError::new(path, Problem::Group { found: st.st_gid, expected: g.as_raw() }));
        }
    }
    let found = st.st_mode & 0o7777;
    if found != mode {
        return Err(FsError::new(path, Problem::Mode { found, expected: format!("{mode:04o}") }));
    }
    Ok(())
}

/// Require a regular file with one link, owned by one of `owners`, not
/// writable by group or others, at most `max_size` bytes.
pub fn require_trusted_file(path: &str, st: &FileStat, owners: &[Uid], max_size: u64) -> Result<(), FsError> {
    if !is_type(st, SFlag::S_IFREG) {
        return Err(FsError::new(path, Problem::WrongType));
    }
    if !owners.contains(&Uid::from_raw(st.st_uid)) {
        let expected = owners.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(" or uid ");
        return Err(FsError::new(path, Problem::Owner { found: st.st_uid, expected: format!("uid {expected}") }));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FsError::new(
            path,
            Problem::Mode { found: mode, expected: "no write permission for group or others".into() },
        ));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > max_size {
        return Err(FsError::new(path, Problem::TooLarge(size)));
    }
    Ok(())
}

/// Whether `st` describes a regular file.
pub fn is_regular(st: &FileStat) -> bool {
    is_type(st, SFlag::S_IFREG)
}

/// Whether `st` describes a directory.
pub fn is_dir(st: &FileStat) -> bool {
    is_type(st, SFlag::S_IFDIR)
}

/// `flock(2)` on `fd`'s open file description, for as long as it is open.
///
/// The lock goes when the last descriptor on that description is closed
/// or the process exits, so a descriptor that is never duplicated (all of
/// outq's are `O_CLOEXEC` and none is `dup`-ed) is released by its `close`
/// alone: nix's `Flock` type would add a `flock(LOCK_UN)` before each close.
pub fn lock(fd: BorrowedFd<'_>, how: nix::fcntl::FlockArg) -> Result<(), Errno> {
    #[allow(deprecated)] // see above: the replacement unlocks in a separate call
    nix::fcntl::flock(fd.as_raw_fd(), how)
}

/// Read a whole trusted file (small: configuration) from its descriptor.
pub fn read_all(fd: OwnedFd, limit: u64) -> std::io::Result<Vec<u8>> {
    read_all_sized(fd, limit, 0)
}

/// [`read_all`] of a regular file `expected` bytes long (from `fstat`): the
/// buffer is sized for it plus one byte, so an unchanged file takes one
/// `read`. A regular file's `read` returns fewer bytes than asked only at
/// its end (a read from a local file system is not cut short by a
/// signal), so a short first read is the whole file and no second `read`
/// is made to see the end; a file that grew since the `fstat` is read on
/// to its end.
pub fn read_all_sized(fd: OwnedFd, limit: u64, expected: u64) -> std::io::Result<Vec<u8>> {
    read_file_sized(&std::fs::File::from(fd), limit, expected)
}

/// [`read_all_sized`] from the current position of `file`, which stays open.
pub fn read_file_sized(mut file: &std::fs::File, limit: u64, expected: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    if expected > 0 {
        let want = usize::try_from(expected.min(limit)).unwrap_or(0).saturating_add(1);
        out.resize(want, 0);
        let n = loop {
            match file.read(&mut out) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        out.truncate(n);
        if n < want {
            return Ok(out);
        }
    }
    let so_far = out.len() as u64;
    file.take(limit.saturating_add(1).saturating_sub(so_far)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other("file grew while being read"));
    }
    Ok(out)
}

/// Bytes available to unprivileged users on a filesystem.
#[allow(clippy::useless_conversion)] // the field types differ between platforms
pub fn available_bytes(vfs: &nix::sys::statvfs::Statvfs) -> u64 {
    u64::from(vfs.blocks_available()).saturating_mul(u64::from(vfs.fragment_size()))
}

/// The size of a filesystem in bytes.
#[allow(clippy::useless_conversion)] // the field types differ between platforms
pub fn total_bytes(vfs: &nix::sys::statvfs::Statvfs) -> u64 {
    u64::from(vfs.blocks()).saturating_mul(u64::from(vfs.fragment_size()))
}
