/*!
The `unsafe` code of outq-spool: libc calls that neither the standard
library nor nix wraps safely. (The only other is the helper's entry point,
`crates/outq-enqueue/src/sys.rs`.) Each function is small, takes no raw pointers from its
callers, and states why it is sound. Safe wrappers with policy live in
[`crate::process`].
*/

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the kernel started this process in secure-execution mode
/// (set-user-ID or set-group-ID, or gained capabilities).
///
/// `getauxval(AT_SECURE)` is the kernel's own answer; comparing real and
/// effective IDs would miss a set-group-ID program run by a member of its
/// group, and would be fooled by nothing else.
pub(crate) fn at_secure() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this
    // process; it takes an integer and returns an integer, touching no memory
    // we own.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Remove every environment variable.
///
/// Called once at start-up, before any other thread exists (the helper never
/// starts one), which is what makes modifying `environ` sound.
pub(crate) fn clear_environment() {
    // SAFETY: clearenv only frees and resets the process environment; the
    // helper is single-threaded at this point, so no concurrent getenv can
    // observe the change, and no Rust reference into `environ` is held.
    unsafe {
        libc::clearenv();
    }
}

/// Fill `buf` from the kernel's random number generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or(&mut []);
        // SAFETY: the pointer and length describe `rest`, a live mutable
        // slice we exclusively borrow for the duration of the call; the
        // kernel writes at most `rest.len()` bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empty this thread's effective, permitted and inheritable capability sets
/// (which also empties the ambient set).
pub(crate) fn clear_capabilities() -> io::Result<()> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset(2) with version 3 reads one header and two data
    // structures; both are live, correctly laid out (repr(C), matching
    // <linux/capability.h>) and outlive the call. pid 0 means this thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective capability set of this thread, as a 64-bit mask.
pub(crate) fn effective_capabilities() -> io::Result<u64> {
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capget(2) writes two data structures that we own and that
    // outlive the call; the header is live and correctly laid out.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let [lo, hi] = data;
    Ok(u64::from(lo.effective) | (u64::from(hi.effective) << 32))
}

/// Set `signals` to be ignored (SIG_IGN).
pub(crate) fn ignore_signals(signals: &[libc::c_int]) -> io::Result<()> {
    for &sig in signals {
        // SAFETY: installing SIG_IGN runs no code of ours in signal context.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_IGN;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The access mode (`O_RDONLY`, `O_WRONLY` or `O_RDWR`) of descriptor `fd`,
/// or `None` when it is closed.
pub(crate) fn fd_access_mode(fd: libc::c_int) -> Option<libc::c_int> {
    // SAFETY: F_GETFL on any integer is harmless: it only reads the open
    // file's status flags, or reports EBADF for a closed descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    (flags != -1).then_some(flags & libc::O_ACCMODE)
}

/// Descriptors 0, 1 and 2 as the program found them, one byte each (byte
/// `fd`): 0 not recorded, 1 closed, 2 + the access mode when open.
///
/// The standard library's start-up code, before a Rust `main`, reopens a
/// closed standard descriptor on `/dev/null`; from then on, a descriptor
/// the caller closed looks exactly like one it redirected to `/dev/null`.
/// The C library runs `.init_array` entries before that start-up code, so
/// the entry below sees the descriptors as the caller left them. (In
/// secure-execution mode glibc reopens them even earlier, in its own way;
/// `process::ensure_std_fds` recognises that by the access mode.) The
/// helper has no Rust start-up code at all; for it, the record also saves
/// asking the kernel a second time.
static STD_FDS_AT_START: AtomicU32 = AtomicU32::new(0);

const FD_CLOSED: u32 = 1;
const FD_OPEN: u32 = 2;

extern "C" fn record_std_fds(_argc: libc::c_int, _argv: *const *const libc::c_char, _envp: *const *const libc::c_char) {
    let mut state = 0u32;
    for fd in 0..3 {
        let byte = match fd_access_mode(fd) {
            None => FD_CLOSED,
            Some(mode) => FD_OPEN + (mode as u32 & 3),
        };
        state |= byte << (8 * fd);
    }
    STD_FDS_AT_START.store(state, Ordering::SeqCst);
}

/// Registers [`record_std_fds`] as a constructor. `#[used]` keeps it in
/// every program that links this crate (it only makes three `fcntl` calls).
#[used]
// SAFETY: `.init_array` holds pointers to functions the loader calls with
// (argc, argv, envp) before `main`; the pointer stored has exactly that C
// signature, and the function touches only an atomic and `fcntl`.
#[unsafe(link_section = ".init_array")]
static RECORD_STD_FDS: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) =
    record_std_fds;

/// Descriptor `fd` (0, 1 or 2) as the program found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdFdAtStart {
    /// Not recorded (the constructor did not run): ask the kernel.
    Unknown,
    Closed,
    /// Open, with this access mode.
    Open(libc::c_int),
}

/// How descriptor `fd` (0, 1 or 2) was when the program started, even if
/// a runtime has reopened it since.
pub(crate) fn std_fd_at_start(fd: libc::c_int) -> StdFdAtStart {
    if !(0..3).contains(&fd) {
        return StdFdAtStart::Unknown;
    }
    match (STD_FDS_AT_START.load(Ordering::SeqCst) >> (8 * fd)) & 0xff {
        FD_CLOSED => StdFdAtStart::Closed,
        b if b >= FD_OPEN => StdFdAtStart::Open((b - FD_OPEN) as libc::c_int),
        _ => StdFdAtStart::Unknown,
    }
}
