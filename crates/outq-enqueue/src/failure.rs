/*!
The helper's single error type, rendered in one place.

Every failure is one line on standard error, `outq-enqueue: WHAT (FIX)`, one
line to syslog, and a sysexits code. `WHAT` never contains a raw byte from
the caller: anything derived from input is escaped first.
*/
#![forbid(unsafe_code)]

use std::io::Write;

use outq_spool::exit::Code;

/// A refusal or error, with the exit code and the remedy to print.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub what: String,
    pub fix: String,
}

impl Failure {
    pub fn new(code: Code, what: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure { code, what: what.into(), fix: fix.into() }
    }

    pub fn usage(what: impl Into<String>) -> Failure {
        Failure::new(Code::Usage, what, "usage: outq-enqueue [-f SENDER] [--] RECIPIENT... < message")
    }

    pub fn temp(what: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure::new(Code::TempFail, what, fix)
    }

    /// Print the line, log it, and return the exit code.
    pub fn report(&self) -> Code {
        let line = format!("{} ({})", self.what, self.fix);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "outq-enqueue: {line}");
        outq_spool::log::warning(&format!(
            "refused: uid={} exit={}: {line}",
            nix::unistd::getuid(),
            self.code.as_i32()
        ));
        self.code
    }
}
