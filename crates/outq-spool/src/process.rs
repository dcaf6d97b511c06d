/*!
Process-level hardening primitives for a program started by a hostile caller.

The caller of a set-group-ID program controls its file descriptors, umask,
resource limits, signal mask and dispositions, and environment. Each function
here neutralises one of those; the helper calls them in a fixed order that
`SECURITY.md` lists. The `unsafe` parts are in the private `sys` module.
*/
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd};

use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{Mode, umask};

use crate::sys;

/// Which of the standard descriptors were closed when the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosedStdFds {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl ClosedStdFds {
    pub fn any(&self) -> bool {
        self.stdin || self.stdout || self.stderr
    }
}

/// Make sure descriptors 0, 1 and 2 are open, opening `/dev/null` on any
/// that is closed, so that no file the program opens later can land on a
/// standard descriptor and receive output meant for the terminal. Returns
/// which ones were closed when the program started. Call it before the
/// program closes any of them itself.
///
/// By the time `main` runs, a closed standard descriptor may have been
/// reopened already: in secure-execution mode glibc reopens 0 on
/// `/dev/full` write-only and 1 and 2 on `/dev/null` read-only, and a Rust
/// `main` (not the helper's) reopens them on `/dev/null` read-write. So a
/// descriptor counts as closed when it cannot be used in its direction
/// (which is as good as closed whoever did it), or when it was closed
/// before any runtime ran. Both are read from the state `sys` recorded
/// before `main`: a descriptor recorded open needs no further system call
/// (nothing closes a standard descriptor before this runs), one recorded
/// closed is looked at again and reopened if it is still closed.
pub fn ensure_std_fds() -> io::Result<ClosedStdFds> {
    let mut closed = ClosedStdFds::default();
    for fd in 0..3 {
        let unusable = if fd == 0 { libc::O_WRONLY } else { libc::O_RDONLY };
        let was_closed = match sys::std_fd_at_start(fd) {
            sys::StdFdAtStart::Open(mode) => mode == unusable,
            sys::StdFdAtStart::Closed => {
                if sys::fd_access_mode(fd).is_none() {
                    reopen_on_dev_null(fd)?;
                }
                true
            }
            sys::StdFdAtStart::Unknown => match sys::fd_access_mode(fd) {
                Some(mode) => mode == unusable,
                None => {
                    reopen_on_dev_null(fd)?;
                    true
                }
            },
        };
        if was_closed {
            match fd {
                0 => closed.stdin = true,
                1 => closed.stdout = true,
                _ => closed.stderr = true,
            }
        }
    }
    Ok(closed)
}

/// Open `/dev/null` on the closed descriptor `fd`. open(2) returns the
/// lowest free descriptor; the lower standard ones are open by now (the
/// caller goes in order), so this lands on `fd`.
fn reopen_on_dev_null(fd: i32) -> io::Result<()> {
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty())?;
    if null.into_raw_fd() != fd {
        return Err(io::Error::other("could not reopen a closed standard descriptor"));
    }
    Ok(())
}

/// Whether the kernel runs this process in secure-execution mode
/// (`getauxval(AT_SECURE)`): started set-group-ID by someone outside the group.
pub fn is_secure() -> bool {
    sys::at_secure()
}

/// Whether `no_new_privs` is set, which makes the kernel ignore the
/// set-group-ID bit (systemd `NoNewPrivileges=yes`, `setpriv --no-new-privs`).
pub fn no_new_privs() -> bool {
    nix::sys::prctl::get_no_new_privs().unwrap_or(false)
}

/// Remove the whole environment. Must be called before any thread starts.
pub fn clear_environment() {
    sys::clear_environment();
}

/// Replace the caller's umask; outq also sets every mode explicitly.
pub fn set_umask(mask: u32) {
    umask(Mode::from_bits_truncate(mask));
}

/// Raise the soft limit of `resource` to its hard limit and return the soft
/// limit now in force.
fn raise_to_hard(resource: Resource) -> io::Result<u64> {
    let (soft, hard) = getrlimit(resource)?;
    if soft != hard {
        setrlimit(resource, hard, hard)?;
    }
    Ok(hard)
}

/// Raise the soft file-size limit to the hard one. A write past the hard
/// limit must then fail with EFBIG, which is reported, instead of killing
/// the process with a partial file: SIGXFSZ must not be delivered, which
/// [`take_termination_signals_blocking_write_signals`] sees to.
pub fn raise_file_size_limit() -> io::Result<u64> {
    raise_to_hard(Resource::RLIMIT_FSIZE)
}

/// Raise the soft open-files limit to the hard one.
pub fn raise_open_files_limit() -> io::Result<u64> {
    raise_to_hard(Resource::RLIMIT_NOFILE)
}

/// Forbid core dumps and make the process non-dumpable: a core file would
/// hold message data, and the caller must not be able to ptrace us.
pub fn disable_core_dumps() -> io::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// Drop every capability. When root runs the helper, root's capabilities
/// would let it bypass the very permission checks the spool relies on.
pub fn clear_capabilities() -> io::Result<()> {
    sys::clear_capabilities()
}

/// This thread's effective capability mask (0 when it holds none).
pub fn effective_capabilities() -> io::Result<u64> {
    sys::effective_capabilities()
}

/// The signals that end the helper early: each is blocked and read from a
/// signalfd instead of being handled, so no code runs in signal context and
/// a signal can never slip in between a check and a blocking read.
const TERMINATING: [Signal; 5] = [Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGALRM];

/// Termination signals, received through a signalfd.
#[derive(Debug)]
pub struct Terminations {
    fd: SignalFd,
    received: Cell<Option<i32>>,
}

/// What [`Terminations::wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The descriptor is readable (or at end of file, or in error: the
    /// following read says which).
    Ready,
    /// A termination signal arrived.
    Signal(i32),
}

/// Ignore SIGPIPE (a write to a closed pipe must be an error we report),
/// unblock every other signal the caller may have blocked, and block the
/// termination signals, which are then read from the returned signalfd.
pub fn take_termination_signals() -> io::Result<Terminations> {
    sys::ignore_signals(&[libc::SIGPIPE])?;
    take_signals(&[])
}

/// As [`take_termination_signals`], for a process that never unblocks a
/// signal and starts no other program (the helper): SIGPIPE and SIGXFSZ
/// are blocked, in the same `sigprocmask` call, instead of ignored. A
/// blocked signal is never delivered; the kernel leaves it pending and the
/// write that raised it fails all the same (EPIPE, EFBIG), so the effect
/// is that of ignoring them, without two `sigaction` calls. They are not
/// in the signalfd's set, so it never reports them.
pub fn take_termination_signals_blocking_write_signals() -> io::Result<Terminations> {
    take_signals(&[Signal::SIGPIPE, Signal::SIGXFSZ])
}

fn take_signals(also_blocked: &[Signal]) -> io::Result<Terminations> {
    let mut set = SigSet::empty();
    for sig in TERMINATING {
        set.add(sig);
    }
    let mut mask = set;
    for &sig in also_blocked {
        mask.add(sig);
    }
    // SIG_SETMASK replaces the inherited mask: exactly these are blocked.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None)?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    Ok(Terminations { fd, received: Cell::new(None) })
}

impl Terminations {
    /// The first termination signal received so far, if any (does not block).
    pub fn pending(&self) -> Option<i32> {
        if self.received.get().is_none() {
            if let Ok(Some(info)) = self.fd.read_signal() {
                self.received.set(i32::try_from(info.ssi_signo).ok());
            }
        }
        self.received.get()
    }

    /// Wait until `input` is readable or a termination signal arrives. A
    /// signal already pending makes the signalfd readable, so one `poll`
    /// sees both; the signalfd is read only when it is.
    pub fn wait_readable(&self, input: BorrowedFd<'_>) -> io::Result<Wait> {
        self.wait_readable_for(input, None)?.ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    }

    /// As [`Terminations::wait_readable`], but gives up after `timeout_ms`
    /// milliseconds of silence (`None` waits for ever): then `Ok(None)`.
    pub fn wait_readable_for(&self, input: BorrowedFd<'_>, timeout_ms: Option<u16>) -> io::Result<Option<Wait>> {
        let timeout = timeout_ms.map_or(PollTimeout::NONE, PollTimeout::from);
        loop {
            if let Some(sig) = self.received.get() {
                return Ok(Some(Wait::Signal(sig)));
            }
            let mut fds = [PollFd::new(input, PollFlags::POLLIN), PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) if timeout_ms.is_some() => return Ok(None),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let [input_ready, signal_ready] = fds.map(|f| f.any().unwrap_or(false));
            if signal_ready {
                if let Some(sig) = self.pending() {
                    return Ok(Some(Wait::Signal(sig)));
                }
            }
            if input_ready {
                return Ok(Some(Wait::Ready));
            }
        }
    }
}

/// Fill `buf` with random bytes from the kernel.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    sys::fill_random(buf)
}
