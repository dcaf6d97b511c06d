/*!
Logging to syslog (facility `mail`) with every untrusted byte escaped.

The syslog crate and libc's `syslog` pass control characters through, so a
caller could forge log lines with an embedded newline. [`escape`] turns every
byte outside printable ASCII, and the backslash, into `\xNN`; nix's `syslog`
always formats with a constant `"%s"`, so a `%` in a message is harmless.
*/
#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::fmt::Write;

use nix::syslog::{Facility, LogFlags, Priority, Severity};

/// Escape `bytes` for a log line: printable ASCII except `\` is kept,
/// everything else becomes `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Open the log with `ident` (a static C string) and facility `mail`.
/// Failure to reach the log daemon is not an error: mail must flow without it.
pub fn open(ident: &'static CStr) {
    let _ = nix::syslog::openlog(Some(ident), LogFlags::LOG_PID, Facility::LOG_MAIL);
}

/// Log one line at `info`. `line` must already be escaped where it holds
/// untrusted bytes; as a safety net any control or non-ASCII byte left is
/// escaped too (a backslash is left alone, so escaped text is not doubled).
pub fn info(line: &str) {
    send(Severity::LOG_INFO, line);
}

/// Log one line at `warning`.
pub fn warning(line: &str) {
    send(Severity::LOG_WARNING, line);
}

fn send(sev: Severity, line: &str) {
    let mut safe = String::with_capacity(line.len());
    for &b in line.as_bytes() {
        if (0x20..0x7f).contains(&b) {
            safe.push(char::from(b));
        } else {
            let _ = write!(safe, "\\x{b:02x}");
        }
    }
    let _ = nix::syslog::syslog(Priority::new(sev, Facility::LOG_MAIL), safe.as_str());
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_controls_backslash_and_high_bytes() {
        assert_eq!(escape(b"a b"), "a b");
        assert_eq!(escape(b"x\ny"), "x\\x0ay");
        assert_eq!(escape(b"\r\0\x1b[31m"), "\\x0d\\x00\\x1b[31m");
        assert_eq!(escape(b"back\\slash"), "back\\x5cslash");
        assert_eq!(escape("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(escape(b"100%s%n"), "100%s%n");
    }
}
