/*!
`outq init`: create or repair the spool.

Creates each directory of `outq_spool::layout::PARTS` that is missing, then
sets its owner, group and mode exactly, through a descriptor opened with
`O_NOFOLLOW` (a symbolic link planted in the spool is refused, never
followed). Idempotent. Never opens, moves or changes a queue file.
*/
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown, geteuid};
use outq_spool::layout::{GroupRole, Kind, PARTS};

use super::{Target, resolve};
use crate::cli::InitArgs;
use crate::error::Error;

const DIR_OPEN: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

pub fn run(args: &InitArgs) -> Result<ExitCode, Error> {
    let t = resolve(&args.spool)?;
    if let Some(e) = &t.config_error {
        return Err(Error::new(e.to_string(), "fix the configuration file first (see outq.conf(5))"));
    }
    validate_identities(&t)?;
    let changes = create(&t)?;
    for c in &changes {
        println!("outq init: {c}");
    }
    println!("outq init: spool {} ready (owner {}, helper group {})", t.spool.display(), t.user.name, t.group.name);
    Ok(ExitCode::SUCCESS)
}

fn validate_identities(t: &Target) -> Result<(), Error> {
    if t.user.uid.is_root() {
        return Err(Error::new("the queue owner must not be root", "create a dedicated user, e.g. 'outq'"));
    }
    let me = geteuid();
    if !me.is_root() && me != t.user.uid {
        return Err(Error::perm(
            format!("only root can create a spool owned by {}", t.user.name),
            "run 'outq init' as root, or give --user with your own name for a private spool",
        ));
    }
    if geteuid().is_root() && (t.group.gid.as_raw() == 0 || t.group.name == "mail" || t.group.gid == t.user.gid) {
        return Err(Error::new(
            format!("group {} cannot be the helper's group", t.group.name),
            "use a dedicated group such as 'outqdrop' that no account has as its group",
        ));
    }
    Ok(())
}

fn sys_err(path: &str, step: &str, e: Errno) -> Error {
    Error::new(format!("{path}: cannot {step}: {}", e.desc()), "run 'outq init' as root, or check the path")
}

/// Create and repair every part; returns a line per change made.
fn create(t: &Target) -> Result<Vec<String>, Error> {
    let mut changes = Vec::new();
    let root_path = t.spool.display().to_string();
    if let Some(parent) = t.spool.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::new(format!("cannot create {}: {e}", parent.display()), "create the parent directory")
        })?;
    }
    let root = match open(&t.spool, DIR_OPEN, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            nix::unistd::mkdir(&t.spool, Mode::from_bits_truncate(0o700))
                .map_err(|e| sys_err(&root_path, "create the directory", e))?;
            changes.push(format!("created {root_path}"));
            open(&t.spool, DIR_OPEN, Mode::empty()).map_err(|e| sys_err(&root_path, "open the directory", e))?
        }
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            return Err(Error::new(
                format!("{root_path} is not a directory (or is a symbolic link)"),
                "remove it or choose another --spool",
            ));
        }
        Err(e) => return Err(sys_err(&root_path, "open the directory", e)),
    };
    for part in PARTS.iter() {
        let shown = if part.name.is_empty() { root_path.clone() } else { format!("{root_path}/{}", part.name) };
        let fd = match part.kind {
            Kind::Dir if part.name.is_empty() => root.try_clone().map_err(|e| Error::new(format!("{e}"), "retry"))?,
            Kind::Dir => open_or_make_dir(&root, part.name, &shown, &mut changes)?,
            Kind::File => open_or_make_file(&root, part.name, &shown, &mut changes)?,
        };
        let gid = match part.group {
            GroupRole::Owner => t.user.gid,
            GroupRole::Drop => t.group.gid,
        };
        fix(&fd, &shown, t.user.uid, gid, part.mode, &mut changes)?;
    }
    Ok(changes)
}

fn open_or_make_dir(root: &OwnedFd, name: &str, shown: &str, changes: &mut Vec<String>) -> Result<OwnedFd, Error> {
    match openat(root.as_fd(), name, DIR_OPEN, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            return Err(Error::new(
                format!("{shown} is not a directory (or is a symbolic link)"),
                "move it aside, then run 'outq init' again",
            ));
        }
        Err(e) => return Err(sys_err(shown, "open the directory", e)),
    }
    mkdirat(root.as_fd(), name, Mode::from_bits_truncate(0o700))
        .map_err(|e| sys_err(shown, "create the directory", e))?;
    changes.push(format!("created {shown}"));
    openat(root.as_fd(), name, DIR_OPEN, Mode::empty()).map_err(|e| sys_err(shown, "open the directory", e))
}

fn open_or_make_file(root: &OwnedFd, name: &str, shown: &str, changes: &mut Vec<String>) -> Result<OwnedFd, Error> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(root.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            let fd =
                openat(root.as_fd(), name, flags | OFlag::O_CREAT | OFlag::O_EXCL, Mode::from_bits_truncate(0o600))
                    .map_err(|e| sys_err(shown, "create the file", e))?;
            changes.push(format!("created {shown}"));
            fd
        }
        Err(Errno::ELOOP) => {
            return Err(Error::new(format!("{shown} is a symbolic link"), "remove it, then run 'outq init' again"));
        }
        Err(e) => return Err(sys_err(shown, "open the file", e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| sys_err(shown, "examine the file", e))?;
    if !outq_spool::fs::is_regular(&st) || st.st_nlink != 1 {
        return Err(Error::new(
            format!("{shown} is not a regular file with one link"),
            "remove it, then run 'outq init' again",
        ));
    }
    Ok(fd)
}

/// Set owner, group and mode through the descriptor, reporting changes.
fn fix(fd: &OwnedFd, shown: &str, uid: Uid, gid: Gid, mode: u32, changes: &mut Vec<String>) -> Result<(), Error> {
    let st = fstat(fd.as_fd()).map_err(|e| sys_err(shown, "examine", e))?;
    if st.st_uid != uid.as_raw() || st.st_gid != gid.as_raw() {
        fchown(fd.as_fd(), Some(uid), Some(gid)).map_err(|e| sys_err(shown, "change the owner", e))?;
        changes.push(format!("set owner of {shown} to {uid}:{gid}"));
    }
    // chown may clear the set-group-ID bit, so the mode is always set last.
    let st = fstat(fd.as_fd()).map_err(|e| sys_err(shown, "examine", e))?;
    if st.st_mode & 0o7777 != mode {
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| sys_err(shown, "change the mode", e))?;
        changes.push(format!("set mode of {shown} to {mode:04o}"));
    }
    Ok(())
}
