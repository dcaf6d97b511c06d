/*!
The helper's entry point: the C `main` that glibc calls, without the Rust
runtime's start-up.

The runtime's start-up code (the `main` that `rustc` generates) costs about
two dozen system calls per run that the helper does not need: it polls
descriptors 0–2, reads `/proc/self/maps` to find the main thread's stack,
installs `SIGSEGV`/`SIGBUS` handlers on an alternate signal stack, seeds a
random hash key, and undoes part of that at exit. What of it matters is
done by [`crate::startup`] instead: descriptors 0–2 are checked and a
closed one reopened on `/dev/null` (`outq_spool::process::ensure_std_fds`),
`SIGPIPE` is blocked (a write to a closed pipe then fails with `EPIPE`), and standard output is flushed explicitly before the
process ends without running destructors. `std::env::args_os` keeps working: on glibc the
standard library records `argv` from its own `.init_array` entry, which
runs before `main` whoever defines it.

This module and `outq_spool`'s `sys` are the only places in the helper
where `unsafe` is allowed; here it is one attribute.
*/

#[cfg(not(test))]
use std::ffi::{c_char, c_int};

/// The process's entry point, called by glibc's `__libc_start_main`.
///
/// Runs the helper and ends the process with its exit code through
/// `std::process::exit`: no destructor runs, and the kernel closes the
/// descriptors and releases the locks. By then the entry is durable (or
/// was never committed) and standard output has been flushed.
// SAFETY: `no_mangle` exports this function as the C symbol `main`. It is
// sound because (1) glibc's `__libc_start_main` calls `main` with exactly
// this signature (`int main(int, char **)`; a third `envp` argument, which
// the C calling convention lets us ignore, is not declared); (2) the crate
// is `no_main` outside tests, so `rustc` generates no `main` of its own and
// no other object linked into the helper defines one (the linker would
// refuse a duplicate); (3) it never unwinds into C: a panic that reaches an
// `extern "C"` function aborts the process. It reads neither argument
// (`std::env::args_os` has its own copy of argv).
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    std::process::exit(crate::run_to_exit_code())
}
