/*!
`outq-sendmail -bs`: an SMTP session on standard input and output, for
programs that submit mail by speaking SMTP to `sendmail -bs` (Symfony
Mailer, Laravel, Drupal) and, through a socket unit, to `localhost:25`.

The session is the state machine of RFC 5321 with the extensions
PIPELINING, SIZE, 8BITMIME and ENHANCEDSTATUSCODES. Input is read through
one bounded buffer: pipelined commands are taken from it one by one and
answered in order, and the replies are flushed whenever the client has
nothing more buffered, so no input is ever lost and a client that waits for
each reply gets it at once. Each accepted message is handed to a
[`Submit`], which runs the same header processing and helper as `-t` mail
([`super::submit_stream`]); the message is queued only if its text ended
properly and was clean ([`super::smtp_data`]).

Bounds: command lines of at most [`MAX_LINE`] bytes, `max_recipients` per
message, `message_size_limit` bytes per message, [`MAX_ERRORS`] errors per
session, and a read timeout (the caller's input wrapper). A longer line, a
NUL, a bare LF in CRLF mode, too many recipients, too big a message, junk
where a command belongs, and a client that leaves or times out inside DATA
each get a 4xx/5xx reply (or, once the client is gone, nothing) and never
a partial queue entry: the helper commits only when its input pipe is
closed after a clean end, and is killed otherwise.
*/
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Read, Write};

use outq_spool::address::{Mailbox, Sender};

use super::smtp_command::{self, Command, Param};
use super::smtp_data::{DataFilter, DataReader, Taint};

/// Longest command line accepted, line end included (RFC 5321 allows 512,
/// plus room for extension parameters).
pub const MAX_LINE: usize = 2048;
/// Errors after which the session is ended (Postfix's smtpd_hard_error_limit).
pub const MAX_ERRORS: u32 = 20;

/// One reply: code, enhanced status code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply { code, status, text: text.into() }
    }

    fn is_error(&self) -> bool {
        self.code >= 400
    }
}

/// The envelope of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub helo: String,
    /// Raw, as given in MAIL FROM (empty: the null sender).
    pub sender: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
}

/// Queue one message. `data` yields the message text and fails if the
/// text is unusable (a taint, or the client left): then nothing may be
/// committed. The reply is the session's answer to the final dot.
pub trait Submit {
    fn submit(&mut self, envelope: &Envelope, data: &mut dyn Read) -> Reply;
}

/// Limits and names of a session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub max_size: u64,
    pub max_recipients: usize,
}

/// How the session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Quit,
    /// The client closed its side.
    Eof,
    /// Too many errors, a timeout, a signal: 421 sent.
    Closed,
}

enum Line {
    Text { text: Vec<u8>, crlf: bool },
    TooLong,
    Eof,
}

/// Read one line of at most `max` bytes (line end included); a longer
/// line is consumed to its end and reported as too long, in constant memory.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> io::Result<Line> {
    let mut text = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (buf.get(..=i).unwrap_or_default(), true),
            None => (buf, false),
        };
        let n = chunk.len();
        if !too_long && text.len() + n <= max {
            text.extend_from_slice(chunk);
        } else {
            too_long = true;
            text.clear();
        }
        r.consume(n);
        if found {
            break;
        }
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    text.pop(); // the LF
    let crlf = text.last() == Some(&b'\r');
    if crlf {
        text.pop();
    }
    Ok(Line::Text { text, crlf })
}

/// Input whose already-buffered bytes can be seen without reading more:
/// replies wait while the client has more commands buffered.
pub trait Buffered: BufRead {
    fn buffered(&self) -> &[u8];
}

impl<T: Read> Buffered for io::BufReader<T> {
    fn buffered(&self) -> &[u8] {
        self.buffer()
    }
}

impl Buffered for &[u8] {
    fn buffered(&self) -> &[u8] {
        self
    }
}

/// A session over `input` and `output`.
pub struct Session<'s, R, W, S> {
    input: R,
    output: W,
    submit: &'s mut S,
    settings: Settings,
    helo: Option<String>,
    envelope: Option<Envelope>,
    errors: u32,
}

impl<R, W, S> std::fmt::Debug for Session<'_, R, W, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("helo", &self.helo).field("envelope", &self.envelope).finish_non_exhaustive()
    }
}

impl<'s, R: Buffered, W: Write, S: Submit> Session<'s, R, W, S> {
    pub fn new(input: R, output: W, submit: &'s mut S, settings: Settings) -> Self {
        Session { input, output, submit, settings, helo: None, envelope: None, errors: 0 }
    }

    fn send(&mut self, r: &Reply) -> io::Result<()> {
        if r.is_error() {
            self.errors += 1;
        }
        let mut lines = r.text.lines().peekable();
        while let Some(l) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            if r.status.is_empty() {
                write!(self.output, "{}{sep}{l}\r\n", r.code)?;
            } else {
                write!(self.output, "{}{sep}{} {l}\r\n", r.code, r.status)?;
            }
        }
        Ok(())
    }

    /// Flush replies unless the client has already sent more (pipelining).
    fn flush_if_idle(&mut self) -> io::Result<()> {
        if !self.input.buffered().contains(&b'\n') { self.output.flush() } else { Ok(()) }
    }

    /// Run the session to its end.
    pub fn run(mut self) -> io::Result<End> {
        let host = self.settings.hostname.clone();
        self.send(&Reply::new(220, "", format!("{host} ESMTP outq-sendmail")))?;
        let end = self.commands();
        let end = match end {
            Ok(end) => end,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.send(&Reply::new(421, "4.4.2", format!("{host} Error: timeout exceeded")))?;
                End::Closed
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => End::Eof,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(End::Eof),
            Err(e) if e.get_ref().is_some_and(|i| i.is::<super::helper::Interrupted>()) => {
                self.send(&Reply::new(421, "4.3.2", format!("{host} Service shutting down")))?;
                End::Closed
            }
            Err(e) => return Err(e),
        };
        self.output.flush()?;
        Ok(end)
    }

    fn commands(&mut self) -> io::Result<End> {
        loop {
            if self.errors >= MAX_ERRORS {
                let r = Reply::new(421, "4.7.0", format!("{} Error: too many errors", self.settings.hostname));
                self.send(&r)?;
                return Ok(End::Closed);
            }
            self.flush_if_idle()?;
            let (text, crlf) = match read_line(&mut self.input, MAX_LINE)? {
                Line::Eof => return Ok(End::Eof),
                Line::TooLong => {
                    self.send(&Reply::new(500, "5.5.2", "Error: line too long"))?;
                    continue;
                }
                Line::Text { text, crlf } => (text, crlf),
            };
            match smtp_command::parse(&text) {
                Command::Quit => {
                    self.send(&Reply::new(221, "2.0.0", "Bye"))?;
                    return Ok(End::Quit);
                }
                Command::Data => {
                    let r = self.data(crlf)?;
                    self.send(&r)?;
                }
                c => {
                    let r = self.command(c);
                    self.send(&r)?;
                }
            }
        }
    }

    fn command(&mut self, c: Command) -> Reply {
        let host = self.settings.hostname.clone();
        match c {
            Command::Helo(name) => {
                self.greet(name);
                Reply::new(250, "", host)
            }
            Command::Ehlo(name) => {
                self.greet(name);
                let text =
                    format!("{host}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES", self.settings.max_size);
                Reply::new(250, "", text)
            }
            Command::Mail { path, params } => self.mail(path, &params),
            Command::Rcpt { path, params } => self.rcpt(path, &params),
            Command::Rset => {
                self.envelope = None;
                Reply::new(250, "2.0.0", "Ok")
            }
            Command::Noop => Reply::new(250, "2.0.0", "Ok"),
            Command::Vrfy => Reply::new(252, "2.5.2", "Send mail and it will be queued for the relay"),
            Command::Expn => Reply::new(502, "5.5.1", "Error: EXPN is not offered"),
            Command::Help => Reply::new(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT"),
            Command::NotOffered(verb) => Reply::new(502, "5.5.1", format!("Error: {verb} is not offered")),
            Command::Unknown => Reply::new(500, "5.5.2", "Error: command not recognized"),
            Command::Syntax(why) => Reply::new(501, "5.5.4", format!("Syntax error: {why}")),
            Command::Quit | Command::Data => Reply::new(451, "4.3.0", "Error: internal sequencing"),
        }
    }

    fn greet(&mut self, name: String) {
        self.helo = Some(name);
        self.envelope = None;
    }

    fn mail(&mut self, path: Vec<u8>, params: &[Param]) -> Reply {
        if self.envelope.is_some() {
            return Reply::new(503, "5.5.1", "Error: nested MAIL command");
        }
        for p in params {
            match (p.keyword.as_str(), p.value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.settings.max_size => {
                        return Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
                    }
                    Ok(_) => {}
                    Err(_) => return Reply::new(501, "5.5.4", "Syntax error: bad SIZE value"),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                _ => return Reply::new(555, "5.5.4", format!("Unsupported option: {}", p.keyword)),
            }
        }
        let valid = path.is_empty()
            || Sender::parse(&path).is_ok()
            || Mailbox::parse_or_qualify(&path, &self.settings.hostname).is_ok();
        if !valid {
            return Reply::new(553, "5.1.7", "Error: the sender address is malformed");
        }
        let helo = self.helo.clone().unwrap_or_default();
        self.envelope = Some(Envelope { helo, sender: path, recipients: Vec::new() });
        Reply::new(250, "2.1.0", "Ok")
    }

    fn rcpt(&mut self, path: Vec<u8>, params: &[Param]) -> Reply {
        let max = self.settings.max_recipients;
        let host = self.settings.hostname.clone();
        let Some(env) = self.envelope.as_mut() else {
            return Reply::new(503, "5.5.1", "Error: need MAIL command");
        };
        if let Some(p) = params.first() {
            return Reply::new(555, "5.5.4", format!("Unsupported option: {}", p.keyword));
        }
        if Mailbox::parse_or_qualify(&path, &host).is_err() {
            return Reply::new(553, "5.1.3", "Error: the recipient address is malformed");
        }
        if env.recipients.len() >= max {
            return Reply::new(452, "4.5.3", "Error: too many recipients");
        }
        if !env.recipients.contains(&path) {
            env.recipients.push(path);
        }
        Reply::new(250, "2.1.5", "Ok")
    }

    fn data(&mut self, crlf: bool) -> io::Result<Reply> {
        match &self.envelope {
            None => return Ok(Reply::new(503, "5.5.1", "Error: need MAIL command")),
            Some(e) if e.recipients.is_empty() => return Ok(Reply::new(554, "5.5.1", "Error: no valid recipients")),
            Some(_) => {}
        }
        let Some(env) = self.envelope.take() else { return Ok(Reply::new(503, "5.5.1", "Error: need MAIL command")) };
        let end = if crlf { "<CR><LF>.<CR><LF>" } else { "a line with only \".\"" };
        self.send(&Reply::new(354, "", format!("End data with {end}")))?;
        self.output.flush()?;
        let mut reader = DataReader::new(&mut self.input, DataFilter::new(crlf, self.settings.max_size));
        let queued = self.submit.submit(&env, &mut reader);
        // Whatever the helper did, find the end of the text: the next
        // command starts there. An I/O error here (the client left, a
        // timeout) ends the session; the helper has been stopped already
        // because the text never ended.
        reader.drain()?;
        Ok(match reader.filter.taint() {
            Some(Taint::BareLf) => Reply::new(550, "5.6.0", "Error: bare <LF> received; end lines with <CR><LF>"),
            Some(Taint::Nul) => Reply::new(554, "5.6.0", "Error: the message contains a NUL byte"),
            Some(Taint::TooBig) => Reply::new(552, "5.3.4", "Error: message file too big"),
            None => queued,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is given; fails like the helper on a spoiled text.
    #[derive(Default)]
    struct Keep {
        got: Vec<(Envelope, Vec<u8>)>,
    }

    impl Submit for Keep {
        fn submit(&mut self, envelope: &Envelope, data: &mut dyn Read) -> Reply {
            let mut text = Vec::new();
            match data.read_to_end(&mut text) {
                Ok(_) => {
                    self.got.push((envelope.clone(), text));
                    Reply::new(250, "2.0.0", "Ok: queued")
                }
                Err(_) => Reply::new(451, "4.3.0", "not queued"),
            }
        }
    }

    fn session(input: &[u8], max_recipients: usize) -> (String, Keep, End) {
        let mut keep = Keep::default();
        let mut out = Vec::new();
        let settings = Settings { hostname: "mx.example".into(), max_size: 1000, max_recipients };
        let end = Session::new(input, &mut out, &mut keep, settings).run().unwrap();
        (String::from_utf8(out).unwrap(), keep, end)
    }

    fn codes(out: &str) -> Vec<&str> {
        out.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| l.get(..3).unwrap()).collect()
    }

    #[test]
    fn pipelined_transaction_in_one_write() {
        let input = b"EHLO c.example\r\nMAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<r@d.example>\r\nRCPT TO:<root>\r\nDATA\r\nSubject: t\r\n\r\n..x\r\n.\r\nQUIT\r\n";
        let (out, keep, end) = session(input, 10);
        assert_eq!(codes(&out), ["220", "250", "250", "250", "250", "354", "250", "221"]);
        assert!(out.contains("250-PIPELINING\r\n") && out.contains("250-SIZE 1000\r\n"));
        assert_eq!(end, End::Quit);
        let (env, text) = &keep.got[0];
        assert_eq!(env.sender, b"a@b.example");
        assert_eq!(env.recipients, [b"r@d.example".to_vec(), b"root".to_vec()]);
        assert_eq!(text, b"Subject: t\r\n\r\n.x\r\n");
    }

    #[test]
    fn sequence_errors_and_limits() {
        let input = b"RCPT TO:<a@b.example>\r\nDATA\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\nDATA\r\nRCPT TO:<a@b.example> NOTIFY=NEVER\r\nRCPT TO:<a@b.example>\r\nRCPT TO:<c@b.example>\r\nRCPT TO:<bad address@x>\r\nMAIL FROM:<a@b> SIZE=5000\r\nRSET\r\nMAIL FROM:<a@b> RET=FULL\r\nVRFY x\r\nEXPN x\r\nSTARTTLS\r\nXYZZY\r\nQUIT\r\n";
        let (out, keep, _) = session(input, 1);
        assert_eq!(
            codes(&out),
            [
                "220", "503", "503", "250", "503", "554", "555", "250", "452", "501", "503", "250", "555", "252",
                "502", "502", "500", "221"
            ]
        );
        assert!(keep.got.is_empty());
    }

    #[test]
    fn hostile_data_is_never_queued() {
        let bare =
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@d.example>\r\nDATA\r\nx\n.\nMAIL FROM:<evil@x>\r\n.\r\nNOOP\r\n";
        let (out, keep, _) = session(bare, 5);
        assert_eq!(codes(&out), ["220", "250", "250", "354", "550", "250"]);
        assert!(keep.got.is_empty());
        let nul = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@d.example>\r\nDATA\r\nx\0y\r\n.\r\n";
        let (out, keep, end) = session(nul, 5);
        assert_eq!(codes(&out), ["220", "250", "250", "354", "554"]);
        assert!(keep.got.is_empty());
        assert_eq!(end, End::Eof);
        let big = [&b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@d.example>\r\nDATA\r\n"[..], &[b'x'; 1200], b"\r\n.\r\n"]
            .concat();
        let (out, keep, _) = session(&big, 5);
        assert_eq!(codes(&out), ["220", "250", "250", "354", "552"]);
        assert!(keep.got.is_empty());
        let cut = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@d.example>\r\nDATA\r\nSubject: half\r\n";
        let (out, keep, end) = session(cut, 5);
        assert_eq!(codes(&out), ["220", "250", "250", "354"]);
        assert!(keep.got.is_empty());
        assert_eq!(end, End::Eof);
    }

    #[test]
    fn long_lines_and_error_limit() {
        let long = [&b"NOOP "[..], &[b'a'; 5000], b"\r\nNOOP\r\n"].concat();
        let (out, _, _) = session(&long, 5);
        assert_eq!(codes(&out), ["220", "500", "250"]);
        let junk = b"junk\r\n".repeat(30);
        let (out, _, end) = session(&junk, 5);
        assert_eq!(end, End::Closed);
        assert_eq!(codes(&out).last(), Some(&"421"));
        assert_eq!(codes(&out).len(), 1 + MAX_ERRORS as usize + 1);
    }

    /// The fuzz target's properties over deterministic mutations of a
    /// pipelined session (the fuzzer itself needs cargo-fuzz).
    #[test]
    fn mutated_sessions_keep_the_invariants() {
        let seed: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=10\r\nRCPT TO:<r@d.example>\r\nDATA\r\nSubject: x\r\n\r\n..y\r\n.\r\nQUIT\r\n";
        let alphabet = b"\r\n.\0 <>:@ADTQMR";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut input = seed.to_vec();
            for _ in 0..(next() % 6 + 1) {
                let at = usize::try_from(next() % (input.len() as u64 + 1)).unwrap();
                let b = alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap()];
                match next() % 3 {
                    0 if at < input.len() => input[at] = b,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.insert(at, b),
                }
            }
            let (out, keep, _) = session(&input, 2);
            for line in out.split_inclusive('\n') {
                assert!(line.ends_with("\r\n") && line.len() >= 6, "{line:?}");
                assert!(line.as_bytes()[..3].iter().all(u8::is_ascii_digit), "{line:?}");
            }
            for (env, text) in keep.got {
                assert!((1..=2).contains(&env.recipients.len()));
                assert!(!text.contains(&0) && text.len() <= 1000);
            }
        }
    }

    #[test]
    fn terminal_session_with_lf() {
        let input = b"HELO me\nMAIL FROM:<a@b.example>\nRCPT TO:<r@d.example>\nDATA\nSubject: t\n\nhi\n.\nQUIT\n";
        let (out, keep, _) = session(input, 5);
        assert_eq!(codes(&out), ["220", "250", "250", "250", "354", "250", "221"]);
        assert_eq!(keep.got[0].1, b"Subject: t\n\nhi\n");
    }
}
