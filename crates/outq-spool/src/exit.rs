/*!
Process exit codes, from BSD `sysexits.h`.

Mail delivery agents and `sendmail` callers interpret these: 75 means "try
again later" and keeps the message in the caller's hands, every other non-zero
code is a permanent refusal. Keep the mapping in one place so the manual pages
and the code cannot drift.
*/
#![forbid(unsafe_code)]

/// A sysexits code. The numeric values are part of outq's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// Success: the entry is durable.
    Ok = 0,
    /// EX_USAGE: the command line is wrong.
    Usage = 64,
    /// EX_DATAERR: the message or an address is unacceptable.
    DataErr = 65,
    /// EX_NOINPUT: standard input is closed or unreadable.
    NoInput = 66,
    /// EX_TEMPFAIL: a temporary or local problem; the caller should retry.
    TempFail = 75,
    /// EX_NOPERM: the caller is not allowed to submit.
    NoPerm = 77,
}

impl Code {
    /// The numeric status handed to `exit(2)`.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// Every code, for documentation checks.
    pub const ALL: [Code; 6] = [Code::Ok, Code::Usage, Code::DataErr, Code::NoInput, Code::TempFail, Code::NoPerm];
}
