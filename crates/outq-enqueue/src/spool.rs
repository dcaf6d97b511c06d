/*!
Finding the configuration and the spool, and checking both on descriptors.

The spool path is walked from `/` with `O_NOFOLLOW`; `tmp/` and `new/` must
have exactly the owner of the spool root, the helper's effective group, and
mode 3730 (see `outq_spool::layout`). When the group does not match, the
helper explains why it is not running with its group: the set-group-ID bit
is missing, or `no_new_privs` made the kernel ignore it.
*/
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::fstat;
use nix::unistd::{Gid, Uid};
use outq_spool::config::{self, Config, Trust};
use outq_spool::fs::{self, AncestorPolicy, FsError, Problem};
use outq_spool::layout;

use crate::args::Args;
use crate::failure::Failure;
use crate::startup::Env;

/// Descriptors on the verified spool directories.
#[derive(Debug)]
pub struct Dirs {
    pub tmp: OwnedFd,
    pub new: OwnedFd,
}

/// In development (not set-group-ID) a path may be relative to the
/// caller's working directory.
fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::temp(format!("cannot find the current directory: {e}"), "give an absolute path"))?;
    Ok(cwd.join(p))
}

/// Owners trusted for configuration and spool ancestors: root, plus the
/// caller when the helper runs without privilege (development).
fn trusted_owners(env: &Env) -> Vec<Uid> {
    let mut v = vec![Uid::from_raw(0)];
    if !env.secure && !env.ruid.is_root() {
        v.push(env.ruid);
    }
    v
}

pub fn load_config(args: &Args, env: &Env) -> Result<Config, Failure> {
    let path = match &args.config {
        Some(p) => absolute(p)?,
        None => PathBuf::from(config::CONFIG_PATH),
    };
    let trust = Trust { owners: trusted_owners(env), allow_sticky: !env.secure };
    match config::load_leaving_descriptors(&path, &trust) {
        Ok((cfg, _found)) => Ok(cfg),
        Err(config::ConfigError::Untrusted(e)) => Err(fs_failure(
            e,
            "configuration not trusted",
            "the file and its directories must be owned by root and not writable by group or others; see outq.conf(5)",
        )),
        Err(e) => Err(Failure::temp(e.to_string(), "correct the configuration file; see outq.conf(5)")),
    }
}

/// A filesystem failure while finding the spool or the configuration: the
/// caller's descriptor limit, or the installation.
fn fs_failure(e: FsError, what: &str, fix: &str) -> Failure {
    match e.errno() {
        Some(Errno::EMFILE | Errno::ENFILE) => {
            Failure::temp(format!("{what}: {e}"), "raise the caller's open files limit (ulimit -n)")
        }
        Some(Errno::ENOMEM) => Failure::temp(format!("{what}: {e}"), "retry when memory is available"),
        _ => Failure::temp(format!("{what}: {e}"), fix),
    }
}

fn misconfigured(e: FsError) -> Failure {
    let fix = match (&e.problem, e.errno()) {
        (_, Some(Errno::ENOENT)) => "create it with 'outq init'",
        (Problem::Sys(_), _) => "check the spool with 'outq check'",
        _ => "repair it with 'outq init', then verify with 'outq check'",
    };
    fs_failure(e, "spool misconfigured", fix)
}

/// Why the helper is not running with the spool's group.
fn not_privileged(env: &Env, dir: &str, found: u32) -> Failure {
    if outq_spool::process::no_new_privs() {
        return Failure::temp(
            format!(
                "not running set-group-ID: the no_new_privs flag is set, so the kernel ignored the set-group-ID bit ({dir} has group {found})"
            ),
            "do not run callers with NoNewPrivileges=yes or setpriv --no-new-privs",
        );
    }
    if !env.secure && !self_is_setgid() {
        return Failure::temp(
            format!(
                "not running set-group-ID: the set-group-ID bit is missing on this program ({dir} has group {found}, we run as group {})",
                env.egid
            ),
            "install it root:outqdrop mode 2755, e.g. 'chown root:outqdrop outq-enqueue && chmod 2755 outq-enqueue'",
        );
    }
    Failure::temp(
        format!("{dir} has group {found} but this program runs as group {}", env.egid),
        "the helper's group and the spool's group must be the same; run 'outq check'",
    )
}

/// Whether our own executable carries the set-group-ID bit (diagnosis only).
fn self_is_setgid() -> bool {
    match nix::sys::stat::stat("/proc/self/exe") {
        Ok(st) => st.st_mode & 0o2000 != 0,
        Err(_) => false,
    }
}

/// Open the spool named by `--spool` or the configuration and verify it.
pub fn open(args: &Args, cfg: &Config, env: &Env) -> Result<Dirs, Failure> {
    let root_path = match &args.spool {
        Some(p) => absolute(p)?,
        None => cfg.spool_directory.clone(),
    };
    // /tmp-like sticky directories are acceptable above the spool: nobody
    // can replace a name they do not own in one, and the group check below
    // cannot be satisfied by a directory an ordinary user made.
    let policy = AncestorPolicy { owners: trusted_owners(env), allow_sticky: true };
    let (root, st) = fs::open_dir_path(&root_path, &policy).map_err(misconfigured)?;
    let shown = root_path.display().to_string();
    if !fs::is_dir(&st) {
        return Err(misconfigured(FsError::new(shown, Problem::WrongType)));
    }
    if st.st_mode & 0o022 != 0 {
        let found = st.st_mode & 0o7777;
        return Err(misconfigured(FsError::new(
            shown,
            Problem::Mode { found, expected: format!("{:04o}", layout::ROOT_DIR_MODE) },
        )));
    }
    let owner = Uid::from_raw(st.st_uid);
    let tmp = open_drop_dir(&root, &shown, layout::TMP, owner, env)?;
    let new = open_drop_dir(&root, &shown, layout::NEW, owner, env)?;
    // Everything after this resolves relative names inside the spool only.
    nix::unistd::fchdir(&root).map_err(|e| misconfigured(FsError::sys(shown, e)))?;
    // The working directory holds the root now; its descriptor is left to
    // the kernel, which closes it at exit (one descriptor, one call saved).
    std::mem::forget(root);
    Ok(Dirs { tmp, new })
}

fn open_drop_dir(root: &OwnedFd, root_shown: &str, name: &str, owner: Uid, env: &Env) -> Result<OwnedFd, Failure> {
    let shown = format!("{root_shown}/{name}");
    let fd = fs::open_child_dir(root, name, &shown).map_err(misconfigured)?;
    let st = fstat(fd.as_fd()).map_err(|e| misconfigured(FsError::sys(shown.clone(), e)))?;
    if st.st_gid != env.egid.as_raw() && fs::is_dir(&st) {
        return Err(not_privileged(env, &shown, st.st_gid));
    }
    fs::require_dir(&shown, &st, owner, Some(Gid::from_raw(st.st_gid)), layout::DROP_DIR_MODE)
        .map_err(misconfigured)?;
    Ok(fd)
}

/// Refuse when the spool's filesystem has less than `spool_min_free` bytes
/// available to unprivileged users. Returns the file system's size (for
/// `submit_share`).
pub fn check_free_space(dirs: &Dirs, cfg: &Config) -> Result<u64, Failure> {
    let vfs = nix::sys::statvfs::fstatvfs(dirs.tmp.as_fd()).map_err(|e| {
        Failure::temp(format!("cannot read free space of the spool: {}", e.desc()), "check the spool filesystem")
    })?;
    let avail = fs::available_bytes(&vfs);
    if avail < cfg.spool_min_free {
        wake_sweep();
        return Err(Failure::temp(
            format!("spool filesystem has {avail} bytes free, below spool_min_free ({})", cfg.spool_min_free),
            "free disk space on the spool's filesystem",
        ));
    }
    Ok(fs::total_bytes(&vfs))
}

/// Ask the runner to reclaim `tmp/` now: set the times of `tmp/` itself,
/// which the runner watches (`IN_ATTRIB` on the directory). The group may
/// do that because it may write `tmp/`; it changes nothing else, and the
/// runner rate-limits the sweeps it triggers. Failure is ignored: the
/// runner's next queue run sweeps anyway. The working directory is the
/// spool root (see [`open`]).
fn wake_sweep() {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        layout::TMP,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::NoFollowSymlink,
    );
}
