/*!
Start-up hardening against the caller, before anything else is done.

The order matters and is documented in SECURITY.md; each step is covered by
a privileged test that runs the installed helper as a real user:

1. standard descriptors 0–2 open (a closed one is reopened on `/dev/null`;
   a closed stdin is refused with exit 66; with stdout or stderr closed the
   message is accepted, as Postfix's postdrop does, and syslog is the only
   channel for the queue ID or the refusal);
2. the environment cleared;
3. umask 077 (every file is also created and chmod-ed with an explicit mode);
4. soft RLIMIT_FSIZE and RLIMIT_NOFILE raised to the hard limits (an
   EFBIG write is reported, not fatal: SIGXFSZ is blocked in step 7);
5. core dumps off and the process made non-dumpable;
6. every capability dropped (root's would bypass the spool's permissions);
7. signals: SIGPIPE and SIGXFSZ blocked, so never delivered (a write
   that raises one fails with EPIPE or EFBIG, as if they were ignored);
   termination signals blocked and read from a signalfd, so an
   interrupted write removes its temporary file;
8. an alarm bounds how long the helper waits for the message.

The caller's identity comes from the kernel (real uid/gid), never from the
environment or the command line.
*/
#![forbid(unsafe_code)]

use nix::unistd::{Gid, Uid, getresgid, getresuid};
use outq_spool::exit::Code;
use outq_spool::process;

use crate::failure::Failure;

/// Longest time the helper may live: a caller that never closes standard
/// input must not hold a temporary file forever.
pub const MAX_LIFETIME_SECS: u32 = 3600;

/// Facts about the process established at start-up.
#[derive(Debug)]
pub struct Env {
    /// Started set-group-ID (`AT_SECURE`).
    pub secure: bool,
    pub ruid: Uid,
    pub rgid: Gid,
    pub euid: Uid,
    pub egid: Gid,
    /// Termination signals, blocked and read from a signalfd.
    pub signals: process::Terminations,
    /// The caller closed standard output: the queue ID goes to syslog only.
    pub stdout_closed: bool,
}

pub fn harden() -> Result<Env, Failure> {
    // First, so that even the earliest refusal is logged under our own
    // name rather than the caller-chosen argv[0] (this opens nothing).
    outq_spool::log::open(c"outq-enqueue");
    let closed = process::ensure_std_fds().map_err(|e| {
        Failure::temp(format!("cannot open /dev/null for a closed standard descriptor: {e}"), "check /dev/null")
    })?;
    // Read before anything can change them. (`no_new_privs`, which only
    // explains a missing group, is read when that diagnosis is made: the
    // flag can be set but never cleared, and the helper never sets it.)
    let secure = process::is_secure();
    let (uids, gids) = ids()?;
    let (ruid, rgid, euid, egid) = (uids.real, gids.real, uids.effective, gids.effective);
    process::clear_environment();
    process::set_umask(0o077);
    process::raise_file_size_limit()
        .map_err(|e| Failure::temp(format!("cannot adjust the file size limit: {e}"), "check the resource limits"))?;
    process::raise_open_files_limit()
        .map_err(|e| Failure::temp(format!("cannot adjust the open files limit: {e}"), "check the resource limits"))?;
    process::disable_core_dumps()
        .map_err(|e| Failure::temp(format!("cannot disable core dumps: {e}"), "check the resource limits"))?;
    // Root's capabilities would bypass the permission checks the spool relies
    // on; any other caller should hold none, and dropping is always allowed.
    process::clear_capabilities()
        .map_err(|e| Failure::temp(format!("cannot drop capabilities: {e}"), "report this as a bug"))?;
    let signals = process::take_termination_signals_blocking_write_signals()
        .map_err(|e| Failure::temp(format!("cannot set up signal handling: {e}"), "report this as a bug"))?;
    nix::unistd::alarm::set(MAX_LIFETIME_SECS);
    if closed.stdin {
        return Err(Failure::new(Code::NoInput, "standard input is closed", "give the message on standard input"));
    }
    // A daemon or MDA may run with standard output or error closed; its
    // mail must not bounce for that. Both now lead to /dev/null, and every
    // outcome is also logged.
    Ok(Env { secure, ruid, rgid, euid, egid, signals, stdout_closed: closed.stdout })
}

/// Real, effective and saved ids, two system calls for the four ids.
fn ids() -> Result<(nix::unistd::ResUid, nix::unistd::ResGid), Failure> {
    let fail = |e: nix::errno::Errno| {
        Failure::temp(format!("cannot read the process's ids: {}", e.desc()), "report this as a bug")
    };
    Ok((getresuid().map_err(fail)?, getresgid().map_err(fail)?))
}
