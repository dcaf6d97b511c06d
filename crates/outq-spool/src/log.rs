/*!
Logging to syslog (facility `mail`) with every untrusted byte escaped.

libc's `syslog` passes control characters through, so a caller could forge
log lines with an embedded newline. [`escape`] turns every byte outside
printable ASCII, and the backslash, into `\xNN`, and every line is checked
again before it is sent.

The record is written to the local log socket `/dev/log` directly, as
`<PRI>IDENT[PID]: TEXT`, without the optional time stamp: the log daemon
stamps a record with its time of arrival (rsyslog, syslog-ng and journald
all do), so there is no need to load the time zone (libc's `syslog` reads
`/etc/localtime` for every new process). Nothing is opened before the first
record: a program that logs nothing makes no system call for logging, and
the helper, which logs one line per submission, makes two (`socket`, and
`sendto` naming `/dev/log`: the datagram socket is never connected, so a
log daemon restarted in between needs nothing redone).
*/
#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::fmt::Write as _;
use std::io::{ErrorKind, Write as _};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::{Mutex, OnceLock};

/// The local log socket (`_PATH_LOG`).
const LOG_SOCKET: &str = "/dev/log";
/// Facility `mail` (2), shifted as syslog's PRI wants it.
const FACILITY_MAIL: u8 = 2 << 3;
const SEVERITY_WARNING: u8 = 4;
const SEVERITY_INFO: u8 = 6;

static IDENT: OnceLock<&'static str> = OnceLock::new();
static PID: OnceLock<u32> = OnceLock::new();
static SOCKET: Mutex<Option<Socket>> = Mutex::new(None);

/// The way to the log daemon: an unconnected datagram socket normally,
/// each record addressed to `/dev/log`; a stream connection where the
/// daemon listens on one (records then end with a NUL, as libc sends them).
enum Socket {
    Datagram(UnixDatagram),
    Stream(UnixStream),
}

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

/// Name the program in its records (a static C string, printable ASCII).
/// Opens nothing: the socket is connected when the first record is sent.
pub fn open(ident: &'static CStr) {
    let _ = IDENT.set(ident.to_str().unwrap_or("outq"));
}

/// Log one line at `info`. `line` must already be escaped where it holds
/// untrusted bytes; as a safety net any control or non-ASCII byte left is
/// escaped too (a backslash is left alone, so escaped text is not doubled).
pub fn info(line: &str) {
    send(SEVERITY_INFO, line);
}

/// Log one line at `warning`.
pub fn warning(line: &str) {
    send(SEVERITY_WARNING, line);
}

/// The record as sent: `<PRI>IDENT[PID]: TEXT`, every byte printable ASCII.
fn record(severity: u8, ident: &str, pid: u32, line: &str) -> String {
    let mut out = format!("<{}>{ident}[{pid}]: ", FACILITY_MAIL | severity);
    for &b in line.as_bytes() {
        if (0x20..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

impl Socket {
    fn send(&mut self, record: &str) -> std::io::Result<()> {
        match self {
            Socket::Datagram(s) => s.send_to(record.as_bytes(), LOG_SOCKET).map(drop),
            Socket::Stream(s) => {
                let mut framed = Vec::with_capacity(record.len() + 1);
                framed.extend_from_slice(record.as_bytes());
                framed.push(0);
                s.write_all(&framed)
            }
        }
    }
}

/// Send one record. Failure to reach the log daemon is not an error: mail
/// must flow without it. A datagram socket is kept whatever happens (it is
/// not tied to the daemon); a stream connection that fails is replaced by
/// a new one, once.
fn send(severity: u8, line: &str) {
    let ident = IDENT.get().copied().unwrap_or("outq");
    let pid = *PID.get_or_init(std::process::id);
    let text = record(severity, ident, pid, line);
    let mut guard = match SOCKET.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut fresh = false;
    for _ in 0..4 {
        if guard.is_none() {
            *guard = UnixDatagram::unbound().ok().map(Socket::Datagram);
            fresh = true;
        }
        let Some(sock) = guard.as_mut() else { return };
        let err = match sock.send(&text) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        match sock {
            // EPROTOTYPE: the daemon listens on a stream socket.
            Socket::Datagram(_) if err.raw_os_error() == Some(libc::EPROTOTYPE) => {
                *guard = UnixStream::connect(LOG_SOCKET).ok().map(Socket::Stream);
                fresh = true;
            }
            Socket::Datagram(_) => return,
            Socket::Stream(_) if fresh => {
                *guard = None;
                return;
            }
            // A daemon restarted since the connection was made.
            Socket::Stream(_) => {
                *guard = UnixStream::connect(LOG_SOCKET).ok().map(Socket::Stream);
                fresh = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{escape, record};

    #[test]
    fn escapes_controls_backslash_and_high_bytes() {
        assert_eq!(escape(b"a b"), "a b");
        assert_eq!(escape(b"x\ny"), "x\\x0ay");
        assert_eq!(escape(b"\r\0\x1b[31m"), "\\x0d\\x00\\x1b[31m");
        assert_eq!(escape(b"back\\slash"), "back\\x5cslash");
        assert_eq!(escape("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(escape(b"100%s%n"), "100%s%n");
    }

    #[test]
    fn records_carry_facility_mail_and_no_control_byte() {
        assert_eq!(record(6, "outq-enqueue", 42, "a\nb"), "<22>outq-enqueue[42]: a\\x0ab");
        assert_eq!(record(4, "outq", 7, "x\\y"), "<20>outq[7]: x\\y");
    }
}
