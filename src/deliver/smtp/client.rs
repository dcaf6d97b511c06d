/*!
One SMTP connection: the socket (plain or TLS) under deadlines, command
lines out, replies in.

Everything the server sends is untrusted, so this layer bounds it before any
parser sees it: a reply line is at most [`MAX_LINE`] octets with its CRLF
(RFC 5321 4.5.3.1.5), a reply at most [`MAX_LINES`] lines. The lines are
then handed to `smtp-proto`'s reply parser, which decides where a reply
ends, and extracts the code, the enhanced status code and the text.

Time is bounded per step, not per system call: a deadline is set before a
command is written and covers the write and the whole reply, so a server
that trickles one byte at a time cannot stretch a step past its timeout.
The socket's own timeouts (`SO_RCVTIMEO`, `SO_SNDTIMEO`) enforce it, but
they are changed only when they would let a read or write end more than
[`SLACK`] after the deadline, or when they ran out before it: steps of the
same length reuse the value already set, so an ordinary conversation makes
no `setsockopt` call per read or write.
*/
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use smtp_proto::response::parser::ResponseReceiver;

/// Longest reply line accepted, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_LINE: usize = 512;
/// Most lines accepted in one reply (a long EHLO reply has about 20).
pub const MAX_LINES: usize = 100;

/// The connection cannot be used any more; the text says why, for the
/// outcome of every recipient still waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

/// How far past its deadline a read or write may end. The socket timeout
/// is set again only when the one in force could overrun by more.
pub const SLACK: Duration = Duration::from_millis(50);

/// A TCP socket whose reads and writes all end by one deadline.
#[derive(Debug)]
struct Sock {
    tcp: TcpStream,
    deadline: Instant,
    /// The socket's read and write timeouts as last set (`None`: never set,
    /// that is, no timeout).
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// Which of the socket's two timeouts.
#[derive(Debug, Clone, Copy)]
enum Dir {
    Read,
    Write,
}

impl Sock {
    /// Time left before the deadline, or a timeout error once it passed.
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")) } else { Ok(left) }
    }

    /// Make sure a blocking call in `dir` cannot outlast the deadline by
    /// more than [`SLACK`]; `force` sets the remaining time in any case
    /// (after the timeout in force ran out early).
    fn bound(&mut self, dir: Dir, force: bool) -> io::Result<()> {
        let left = self.remaining()?;
        let current = match dir {
            Dir::Read => self.read_timeout,
            Dir::Write => self.write_timeout,
        };
        if !force && current.is_some_and(|t| t <= left.saturating_add(SLACK)) {
            return Ok(());
        }
        match dir {
            Dir::Read => {
                self.tcp.set_read_timeout(Some(left))?;
                self.read_timeout = Some(left);
            }
            Dir::Write => {
                self.tcp.set_write_timeout(Some(left))?;
                self.write_timeout = Some(left);
            }
        }
        Ok(())
    }

    /// Run one blocking call under the deadline. A socket timeout that ran
    /// out while time is left (it was set for a shorter step) is set to
    /// the time left and the call made again.
    fn io<T>(&mut self, dir: Dir, mut call: impl FnMut(&mut TcpStream) -> io::Result<T>) -> io::Result<T> {
        let mut force = false;
        loop {
            self.bound(dir, force)?;
            match call(&mut self.tcp) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    // remaining() turns an expired deadline into TimedOut.
                    self.remaining()?;
                    force = true;
                }
                other => return other,
            }
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io(Dir::Read, |tcp| tcp.read(buf))
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io(Dir::Write, |tcp| tcp.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The byte stream, before or after TLS.
#[derive(Debug)]
enum Stream {
    Plain(Sock),
    Tls(Box<StreamOwned<ClientConnection, Sock>>),
}

impl Stream {
    fn sock(&mut self) -> &mut Sock {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// One reply, reduced to what delivery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Code, enhanced status code (when given) and text on one line, the
    /// lines of a multi-line reply joined with a space.
    pub text: String,
    /// The reply as received (bounded), for the EHLO parser.
    pub raw: Vec<u8>,
}

impl Reply {
    /// The first digit of the code: 2 success, 3 intermediate, 4 temporary,
    /// 5 permanent.
    pub fn class(&self) -> u16 {
        self.code / 100
    }
}

/// The one-line text of a parsed reply.
fn one_line(code: u16, esc: [u8; 3], message: &str) -> String {
    let mut text = code.to_string();
    if esc != [0, 0, 0] {
        text.push_str(&format!(" {}.{}.{}", esc[0], esc[1], esc[2]));
    }
    let message = message.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    if !message.is_empty() {
        text.push(' ');
        text.push_str(&message);
    }
    text
}

/// Describe an I/O error without Rust's "(os error N)" suffix.
pub fn describe(e: &io::Error) -> String {
    match (e.raw_os_error(), e.kind()) {
        (Some(n), _) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        (None, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => "timed out".to_owned(),
        _ => e.to_string(),
    }
}

/// A connection to one relay address.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    /// Received and not yet consumed (never more than a line and a read).
    rbuf: Vec<u8>,
    /// `host[ip]:port`, for the outcomes and the explanations.
    pub relay: String,
    pub peer_ip: IpAddr,
}

impl Conn {
    /// Wrap a connected socket. TCP_NODELAY is set: replies are waited for
    /// after every command or pipelined group, so Nagle's algorithm would
    /// only add a delayed ACK's worth of latency to each (nullmailer's 40 ms
    /// per message).
    pub fn new(tcp: TcpStream, relay: String, peer_ip: IpAddr) -> Result<Conn, Broken> {
        tcp.set_nodelay(true).map_err(|e| Broken(format!("cannot set TCP_NODELAY on {relay}: {}", describe(&e))))?;
        let sock = Sock { tcp, deadline: Instant::now(), read_timeout: None, write_timeout: None };
        Ok(Conn { stream: Stream::Plain(sock), rbuf: Vec::new(), relay, peer_ip })
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Start the clock for one step.
    pub fn set_timeout(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.stream.sock().deadline = now.checked_add(timeout).unwrap_or(now + Duration::from_secs(86_400));
    }

    /// Turn an I/O error during `what` into the reason the connection died.
    pub fn broken(&self, e: &io::Error, what: &str) -> Broken {
        let relay = &self.relay;
        Broken(match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                format!("conversation with {relay} timed out while {what}")
            }
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => format!("lost connection with {relay} while {what}"),
            _ => format!("error talking to {relay} while {what}: {}", describe(e)),
        })
    }

    fn malformed(&self, what: &str, detail: &str) -> Broken {
        Broken(format!("{} sent a malformed reply while {what}: {detail}", self.relay))
    }

    /// Read one line (with its LF) of at most [`MAX_LINE`] octets.
    fn read_line(&mut self, what: &str) -> Result<Vec<u8>, Broken> {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(lf) = self.rbuf.iter().position(|&b| b == b'\n') {
                if lf >= MAX_LINE {
                    return Err(self.malformed(what, "line longer than 512 octets"));
                }
                return Ok(self.rbuf.drain(..=lf).collect());
            }
            if self.rbuf.len() >= MAX_LINE {
                return Err(self.malformed(what, "line longer than 512 octets"));
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(self.broken(&io::ErrorKind::UnexpectedEof.into(), what)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.broken(&e, what)),
            };
            self.rbuf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        }
    }

    /// Read one reply within the deadline already set.
    pub fn read_reply(&mut self, what: &str) -> Result<Reply, Broken> {
        let mut receiver = ResponseReceiver::default();
        let mut raw = Vec::new();
        for _ in 0..MAX_LINES {
            let line = self.read_line(what)?;
            raw.extend_from_slice(&line);
            match receiver.parse(&mut line.iter()) {
                Ok(r) => {
                    if !(200..600).contains(&r.code) {
                        return Err(self.malformed(what, &format!("reply code {}", r.code)));
                    }
                    return Ok(Reply { code: r.code, text: one_line(r.code, r.esc, &r.message), raw });
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                Err(e) => return Err(self.malformed(what, &format!("{e:?}"))),
            }
        }
        Err(self.malformed(what, "more than 100 lines"))
    }

    /// Write raw bytes (a command line with its CRLF) within the deadline.
    pub fn write_line(&mut self, line: &[u8], what: &str) -> Result<(), Broken> {
        let r = self.stream.write_all(line).and_then(|()| self.stream.flush());
        r.map_err(|e| self.broken(&e, what))
    }

    /// Send `line` (without CRLF) and read the reply, both within `timeout`.
    /// A 421 reply means the server is closing the connection (RFC 5321
    /// 3.8): it is returned as [`Broken`] with the server's text.
    ///
    /// Commands are sent one at a time, so bytes already waiting are a reply
    /// nobody asked for: replies would no longer match their commands, and
    /// a recipient could get another's verdict. Such a connection is given
    /// up (unless what waits is a 421, which is reported as such).
    pub fn command(&mut self, line: &str, what: &str, timeout: Duration) -> Result<Reply, Broken> {
        self.set_timeout(timeout);
        if self.has_unread() {
            return Err(self.unsolicited(what).0);
        }
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write_line(&bytes, what)?;
        self.finish_reply(what)
    }

    /// Write `lines` (commands, each with its CRLF) at once, within
    /// `timeout`, for their replies to be read with [`Conn::reply`] in
    /// order: a group of pipelined commands (RFC 2920). The caller checks
    /// [`Conn::has_unread`] first, as [`Conn::command`] does.
    pub fn send(&mut self, lines: &[u8], what: &str, timeout: Duration) -> Result<(), Broken> {
        self.set_timeout(timeout);
        self.write_line(lines, what)
    }

    /// Read the reply to a command already sent, within `timeout`; a 421
    /// is returned as [`Broken`], as by [`Conn::command`].
    pub fn reply(&mut self, what: &str, timeout: Duration) -> Result<Reply, Broken> {
        self.set_timeout(timeout);
        self.finish_reply(what)
    }

    fn finish_reply(&mut self, what: &str) -> Result<Reply, Broken> {
        let reply = self.read_reply(what)?;
        if reply.code == 421 {
            return Err(Broken(reply.text));
        }
        Ok(reply)
    }

    /// The reason to give up a connection on which a reply is waiting that
    /// no command asked for, and whether that reply is a 421 (the server
    /// closing, its text the reason) rather than a reply out of step.
    pub fn unsolicited(&mut self, what: &str) -> (Broken, bool) {
        match self.read_reply(what) {
            Ok(early) if early.code == 421 => (Broken(early.text), true),
            Ok(early) => (self.malformed(what, &format!("a reply before the command: {}", early.text)), false),
            Err(b) => (b, false),
        }
    }

    /// Whether unread bytes are waiting (after a reply that should have been
    /// the last thing the server sent).
    pub fn has_unread(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Switch to TLS and complete the handshake within `timeout`.
    pub fn start_tls(
        self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        timeout: Duration,
    ) -> Result<Conn, Broken> {
        let Conn { stream, rbuf, relay, peer_ip } = self;
        // Bytes that arrived before the handshake were sent in the clear
        // and must never be read as if they had come over TLS (the STARTTLS
        // command injection of CVE-2011-0411 and its kin).
        if !rbuf.is_empty() {
            return Err(Broken(format!("{relay} sent data after its reply to STARTTLS")));
        }
        let Stream::Plain(sock) = stream else {
            return Err(Broken(format!("TLS with {relay} is already active")));
        };
        let tls =
            ClientConnection::new(config, name).map_err(|e| Broken(format!("cannot start TLS with {relay}: {e}")))?;
        let mut conn = Conn { stream: Stream::Tls(Box::new(StreamOwned::new(tls, sock))), rbuf, relay, peer_ip };
        conn.set_timeout(timeout);
        if let Stream::Tls(t) = &mut conn.stream {
            while t.conn.is_handshaking() {
                if let Err(e) = t.conn.complete_io(&mut t.sock) {
                    let why = match e.kind() {
                        io::ErrorKind::TimedOut => "timed out".to_owned(),
                        io::ErrorKind::UnexpectedEof => "connection closed".to_owned(),
                        _ => describe(&e),
                    };
                    return Err(Broken(format!("TLS handshake with {} failed: {why}", conn.relay)));
                }
            }
        }
        Ok(conn)
    }

    /// Send QUIT and close, waiting at most `timeout` for the reply. The
    /// reply changes nothing, so errors are ignored.
    pub fn quit(mut self, timeout: Duration) {
        if self.command("QUIT", "sending QUIT", timeout).is_err() {
            return;
        }
        if let Stream::Tls(t) = &mut self.stream {
            t.conn.send_close_notify();
            let _ = t.conn.complete_io(&mut t.sock);
        }
    }

    /// The stream for the DATA phase, to write the message on.
    pub fn writer(&mut self) -> impl Write + '_ {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A client connection and the server end of it.
    fn pair() -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        (Conn::new(c, format!("test[{}]:{}", addr.ip(), addr.port()), addr.ip()).unwrap(), s)
    }

    fn reply_to(bytes: &[u8]) -> Result<Reply, Broken> {
        let (mut c, mut s) = pair();
        s.write_all(bytes).unwrap();
        drop(s);
        c.set_timeout(Duration::from_secs(5));
        c.read_reply("testing")
    }

    #[test]
    fn single_and_multi_line_replies() {
        let r = reply_to(b"250 2.1.0 Sender ok\r\n").unwrap();
        assert_eq!((r.code, r.text.as_str()), (250, "250 2.1.0 Sender ok"));
        let r = reply_to(b"550-5.1.1 No such\r\n550-5.1.1 user\r\n550 5.1.1 here\r\n").unwrap();
        assert_eq!((r.code, r.class(), r.text.as_str()), (550, 5, "550 5.1.1 No such user here"));
        let r = reply_to(b"354 End data with <CR><LF>.<CR><LF>\r\n").unwrap();
        assert_eq!(r.text, "354 End data with <CR><LF>.<CR><LF>");
        assert_eq!(reply_to(b"250\r\n").unwrap().text, "250");
        // A bare LF ends a line too: servers are not all careful.
        assert_eq!(reply_to(b"451 try later\n").unwrap().text, "451 try later");
    }

    #[test]
    fn a_reply_ends_at_its_last_line() {
        let (mut c, mut s) = pair();
        s.write_all(b"250-a\r\n250 b\r\n220 next\r\n").unwrap();
        c.set_timeout(Duration::from_secs(5));
        assert_eq!(c.read_reply("x").unwrap().text, "250 a b");
        assert!(c.has_unread());
        assert_eq!(c.read_reply("x").unwrap().code, 220);
        assert!(!c.has_unread());
    }

    #[test]
    fn bounds_what_the_server_sends() {
        let long = [b"250 ".as_slice(), &[b'x'; 600], b"\r\n"].concat();
        assert!(reply_to(&long).unwrap_err().0.contains("longer than 512"));
        let many = b"250-x\r\n".repeat(MAX_LINES + 1);
        assert!(reply_to(&many).unwrap_err().0.contains("more than 100 lines"));
        // No line end at all: refused at the bound, not buffered forever.
        assert!(reply_to(&[b'2'; 4000]).unwrap_err().0.contains("longer than 512"));
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [&b"hello\r\n"[..], b"25 x\r\n", b"099 x\r\n", b"650 x\r\n", b"250x\r\n"] {
            let e = reply_to(bad).unwrap_err();
            assert!(e.0.contains("malformed reply while testing"), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn eof_and_timeouts_are_explained() {
        let e = reply_to(b"250-partial\r\n").unwrap_err();
        assert_eq!(e.0, format!("lost connection with {} while testing", e.0.split(' ').nth(3).unwrap()));
        let (mut c, _s) = pair();
        let t = Instant::now();
        c.set_timeout(Duration::from_millis(200));
        let e = c.read_reply("waiting").unwrap_err();
        assert!(e.0.starts_with("conversation with test[127.0.0.1]:") && e.0.ends_with("timed out while waiting"));
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn the_deadline_covers_the_whole_reply() {
        // One byte every 100 ms would reset a per-read timeout forever.
        let (mut c, mut s) = pair();
        let feeder = std::thread::spawn(move || {
            for _ in 0..30 {
                if s.write_all(b"2").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = Instant::now();
        c.set_timeout(Duration::from_millis(500));
        assert!(c.read_reply("trickled").unwrap_err().0.contains("timed out"));
        assert!(t.elapsed() < Duration::from_millis(1500));
        drop(c);
        feeder.join().unwrap();
    }

    #[test]
    fn command_421_breaks_the_connection() {
        let (mut c, mut s) = pair();
        s.write_all(b"421 4.3.2 shutting down\r\n").unwrap();
        assert_eq!(c.command("NOOP", "x", Duration::from_secs(5)), Err(Broken("421 4.3.2 shutting down".into())));
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"NOOP\r\n");
    }

    #[test]
    fn a_reply_nobody_asked_for_breaks_the_connection() {
        let (mut c, mut s) = pair();
        s.write_all(b"250 ok\r\n550 extra\r\n").unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(c.command("RCPT TO:<a@b.example>", "sending RCPT TO", t).unwrap().text, "250 ok");
        let e = c.command("RCPT TO:<c@d.example>", "sending RCPT TO", t).unwrap_err();
        assert!(e.0.ends_with("malformed reply while sending RCPT TO: a reply before the command: 550 extra"), "{e:?}");
        // An unsolicited 421 is the server closing: its text is the reason.
        let (mut c, mut s) = pair();
        s.write_all(b"220 hi\r\n421 4.4.2 idle timeout\r\n").unwrap();
        c.set_timeout(t);
        c.read_reply("greeting").unwrap();
        assert_eq!(c.command("RSET", "sending RSET", t), Err(Broken("421 4.4.2 idle timeout".into())));
    }

    #[test]
    fn describes_errors_without_os_codes() {
        assert_eq!(describe(&io::Error::from_raw_os_error(111)), "Connection refused");
        assert_eq!(describe(&io::ErrorKind::TimedOut.into()), "timed out");
    }
}
