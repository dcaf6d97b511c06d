/*!
The one error type of `outq`, printed as one line `outq: WHAT (FIX)`.
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::process::ExitCode;

/// A failure of an `outq` command.
#[derive(Debug)]
pub struct Error {
    pub what: String,
    pub fix: String,
    pub code: u8,
}

impl Error {
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Error {
        Error { what: what.into(), fix: fix.into(), code: 1 }
    }

    /// Exit with EX_TEMPFAIL (75).
    pub fn temp(what: impl Into<String>, fix: impl Into<String>) -> Error {
        Error { code: 75, ..Error::new(what, fix) }
    }

    /// Exit with EX_USAGE (64).
    pub fn usage(what: impl Into<String>, fix: impl Into<String>) -> Error {
        Error { code: 64, ..Error::new(what, fix) }
    }

    /// Exit with EX_NOPERM (77).
    pub fn perm(what: impl Into<String>, fix: impl Into<String>) -> Error {
        Error { code: 77, ..Error::new(what, fix) }
    }

    pub fn report(&self) -> ExitCode {
        eprintln!("outq: {self}");
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.what, self.fix)
    }
}

impl std::error::Error for Error {}
