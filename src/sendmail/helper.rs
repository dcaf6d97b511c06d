/*!
Running the set-group-ID helper `outq-enqueue` and streaming the message
into it.

The helper gets a clean command line, `-f SENDER -- RECIPIENT...`, and, only
when its file is not set-group-ID (a development copy), `--spool DIR
--config FILE` from the configuration outq-sendmail read. Its environment
is emptied; its standard output (the queue ID) is discarded, as sendmail
prints nothing on success; its standard error is the caller's.

The rewritten header section is written first, then the rest of the
message is copied in 64 KiB pieces. Standard input is read with read(2)
after waiting for it or for a termination signal, whichever comes first:
when outq-sendmail is told to stop, or cannot read its input, it sends the
helper SIGTERM instead of closing the pipe, because a closed pipe is how
the helper learns the message is complete; a truncated message is never
committed. If the helper exits before reading everything (it refused the
envelope), the write fails with EPIPE and its exit code is returned.
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outq_spool::exit::Code;
use outq_spool::process::{Terminations, Wait};

use super::Failure;

const CHUNK: usize = 64 * 1024;

/// A termination signal that arrived while reading standard input.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by signal {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Standard input, read with read(2) (std's `Stdin` would take a
/// write-only descriptor for end of input) and abandoned on a termination
/// signal.
#[derive(Debug)]
pub struct Input<'a> {
    pub signals: &'a Terminations,
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stdin = io::stdin();
        loop {
            match self.signals.wait_readable(stdin.as_fd())? {
                Wait::Ready => {}
                Wait::Signal(sig) => return Err(io::Error::other(Interrupted(sig))),
            }
            match nix::unistd::read(stdin.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Why reading the caller's input failed: a signal, or an I/O error.
pub fn input_failure(e: &io::Error) -> Failure {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Interrupted>()) {
        Some(Interrupted(sig)) => Failure::temp(format!("interrupted by signal {sig}"), "submit the message again"),
        None => Failure::new(
            Code::NoInput,
            format!("cannot read standard input: {e}"),
            "give the message on standard input",
        ),
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Helper {
    pub program: PathBuf,
    /// `--spool DIR --config FILE`, for a helper that is not set-group-ID.
    pub development: Option<(PathBuf, PathBuf)>,
}

/// Whether `program` carries the set-group-ID bit. `None` if it cannot be
/// examined (running it will then say why).
pub fn is_setgid(program: &Path) -> Option<bool> {
    nix::sys::stat::stat(program).ok().map(|st| st.st_mode & 0o2000 != 0)
}

fn argv(helper: &Helper, sender: &[u8], recipients: &[Vec<u8>]) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    if let Some((spool, config)) = &helper.development {
        v.push("--spool".into());
        v.push(spool.clone().into_os_string());
        v.push("--config".into());
        v.push(config.clone().into_os_string());
    }
    v.push("-f".into());
    v.push(std::ffi::OsString::from_vec(sender.to_vec()));
    v.push("--".into());
    v.extend(recipients.iter().map(|r| std::ffi::OsString::from_vec(r.clone())));
    v
}

/// Stop the helper without letting it commit: SIGTERM (it removes its
/// temporary file), then reap it.
fn abort(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let _ = child.wait();
}

/// Run the helper with `head` and then the rest of `body` on its standard
/// input; returns its exit code.
pub fn submit<R: Read>(
    helper: &Helper,
    sender: &[u8],
    recipients: &[Vec<u8>],
    head: &[u8],
    body: &mut R,
    signals: &Terminations,
) -> Result<u8, Failure> {
    let shown = helper.program.display().to_string();
    let mut child = Command::new(&helper.program)
        .args(argv(helper, sender, recipients))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Failure::temp(
                format!("cannot run {shown}: {e}"),
                "install outq-enqueue, or name it with enqueue_program in outq.conf",
            )
        })?;
    let Some(mut pipe) = child.stdin.take() else {
        abort(&mut child);
        return Err(Failure::temp("no pipe to the helper", "report this as a bug"));
    };
    match copy(head, body, &mut pipe, signals) {
        Ok(()) | Err(Copy::Closed) => {}
        Err(Copy::Input(e)) => {
            abort(&mut child);
            return Err(input_failure(&e));
        }
        Err(Copy::Signal(sig)) => {
            abort(&mut child);
            return Err(Failure::temp(format!("interrupted by signal {sig}"), "submit the message again"));
        }
        Err(Copy::Output(e)) => {
            abort(&mut child);
            return Err(Failure::temp(format!("cannot write to {shown}: {e}"), "submit the message again"));
        }
    }
    // End of input: the helper commits the message now.
    drop(pipe);
    let status = child.wait().map_err(|e| {
        Failure::temp(format!("cannot wait for {shown}: {e}"), "check the queue with outq-sendmail -bp")
    })?;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(u8::try_from(code).unwrap_or(Code::TempFail as u8)),
        (None, Some(sig)) => Err(Failure::temp(
            format!("{shown} was killed by signal {sig}"),
            "submit the message again; see the system log",
        )),
        (None, None) => Err(Failure::temp(format!("{shown} ended abnormally"), "submit the message again")),
    }
}

/// How copying stopped early.
enum Copy {
    /// The helper closed its end: it has refused and will say why.
    Closed,
    Input(io::Error),
    Output(io::Error),
    Signal(i32),
}

fn copy<R: Read, W: Write>(head: &[u8], body: &mut R, out: &mut W, signals: &Terminations) -> Result<(), Copy> {
    let write = |out: &mut W, data: &[u8]| match out.write_all(data) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Copy::Closed),
        Err(e) => Err(Copy::Output(e)),
    };
    write(out, head)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Input(e)),
        };
        write(out, buf.get(..n).unwrap_or_default())?;
        // A signal that arrived during a blocking write.
        if let Some(sig) = signals.pending() {
            return Err(Copy::Signal(sig));
        }
    }
    if let Some(sig) = signals.pending() {
        return Err(Copy::Signal(sig));
    }
    Ok(())
}
