/*!
The message text after `DATA` in `outq-sendmail -bs`: where it ends, dot
unstuffing, and what makes the message unacceptable, in constant memory.

Two line-end modes, chosen by the line end of the `DATA` command itself:

- CRLF (every SMTP library): the text ends only at CR LF `.` CR LF. A bare
  LF anywhere taints the message (it is refused with 550 after its end),
  and a line after a bare LF cannot end the text. This closes the SMTP
  smuggling ambiguity (`<LF>.<LF>`): no two readers can disagree about
  where this message ends, because a message that could be read two ways
  is never queued.
- LF (a person typing at a terminal, whose `DATA` ended with a bare LF):
  lines end with LF, with or without CR, and a line holding only `.` ends
  the text.

A leading `.` is removed from every other line (RFC 5321 4.5.2). Bytes are
passed on unchanged otherwise, line ends included. The text also taints on
a NUL byte (the helper would refuse it) and once it passes the size limit;
after a taint, nothing more is passed on but the end is still found, so
the session stays in step with the client.
*/
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Read};

/// Why the text cannot be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taint {
    BareLf,
    Nul,
    TooBig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    MidLine,
    /// CR seen in a line.
    Cr,
    /// `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    Ended,
}

/// The state machine over the raw bytes of the text.
#[derive(Debug, Clone)]
pub struct DataFilter {
    state: State,
    crlf: bool,
    limit: u64,
    size: u64,
    taint: Option<Taint>,
}

impl DataFilter {
    /// `crlf`: the `DATA` line ended with CR LF; `limit`: most bytes passed on.
    pub fn new(crlf: bool, limit: u64) -> DataFilter {
        DataFilter { state: State::LineStart, crlf, limit, size: 0, taint: None }
    }

    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    pub fn taint(&self) -> Option<Taint> {
        self.taint
    }

    fn spoil(&mut self, t: Taint) {
        self.taint.get_or_insert(t);
    }

    fn emit(&mut self, b: u8, out: &mut Vec<u8>) {
        if b == 0 {
            self.spoil(Taint::Nul);
        }
        self.size += 1;
        if self.size > self.limit {
            self.spoil(Taint::TooBig);
        }
        if self.taint.is_none() {
            out.push(b);
        }
    }

    /// A byte inside a line (not at its start).
    fn mid(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => {
                self.emit(b, out);
                self.state = State::Cr;
            }
            b'\n' => self.line_end(false, out),
            _ => {
                self.emit(b, out);
                self.state = State::MidLine;
            }
        }
    }

    /// LF; `after_cr`: it completes a CR LF.
    fn line_end(&mut self, after_cr: bool, out: &mut Vec<u8>) {
        self.emit(b'\n', out);
        if after_cr || !self.crlf {
            self.state = State::LineStart;
        } else {
            // A bare LF in CRLF mode: the next line cannot end the text.
            self.spoil(Taint::BareLf);
            self.state = State::MidLine;
        }
    }

    /// Feed bytes; returns how many were used (all of them, unless the end
    /// of the text came first: what follows it is the next command).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        for (i, &b) in input.iter().enumerate() {
            match self.state {
                State::Ended => return i,
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                    } else {
                        self.mid(b, out);
                    }
                }
                State::MidLine => self.mid(b, out),
                State::Cr => {
                    if b == b'\n' {
                        self.line_end(true, out);
                    } else {
                        self.mid(b, out);
                    }
                }
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    b'\n' if !self.crlf => self.state = State::Ended,
                    // Dot unstuffing: the leading dot goes, the rest stays.
                    _ => self.mid(b, out),
                },
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::Ended;
                    } else {
                        // `.` CR x: unstuffed, the CR is ordinary data.
                        self.emit(b'\r', out);
                        self.mid(b, out);
                    }
                }
            }
        }
        input.len()
    }
}

/// How reading the text failed.
#[derive(Debug)]
pub struct Spoiled(pub Taint);

impl std::fmt::Display for Spoiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message refused: {:?}", self.0)
    }
}

impl std::error::Error for Spoiled {}

/// The text as a reader: ends (`Ok(0)`) exactly at its terminating line,
/// fails on a taint, and on end of input before the terminating line.
#[derive(Debug)]
pub struct DataReader<'a, R> {
    inner: &'a mut R,
    pub filter: DataFilter,
    pending: Vec<u8>,
    pos: usize,
}

impl<'a, R: BufRead> DataReader<'a, R> {
    pub fn new(inner: &'a mut R, filter: DataFilter) -> DataReader<'a, R> {
        DataReader { inner, filter, pending: Vec::new(), pos: 0 }
    }

    /// Read and discard what is left of the text, up to its end.
    pub fn drain(&mut self) -> io::Result<()> {
        let mut sink = Vec::new();
        while !self.filter.ended() {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let used = self.filter.feed(buf, &mut sink);
            self.inner.consume(used);
            sink.clear();
        }
        Ok(())
    }
}

impl<R: BufRead> Read for DataReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(t) = self.filter.taint() {
                return Err(io::Error::other(Spoiled(t)));
            }
            if self.pos < self.pending.len() {
                let avail = self.pending.get(self.pos..).unwrap_or_default();
                let n = avail.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), avail.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.pos += n;
                return Ok(n);
            }
            if self.filter.ended() || buf.is_empty() {
                return Ok(0);
            }
            self.pending.clear();
            self.pos = 0;
            let input = self.inner.fill_buf()?;
            if input.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client left in the middle of DATA"));
            }
            let used = self.filter.feed(input, &mut self.pending);
            self.inner.consume(used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` byte by byte and all at once; both must agree.
    fn run(input: &[u8], crlf: bool) -> (Vec<u8>, usize, bool, Option<Taint>) {
        let mut f = DataFilter::new(crlf, 1 << 20);
        let mut out = Vec::new();
        let used = f.feed(input, &mut out);
        let mut g = DataFilter::new(crlf, 1 << 20);
        let mut out2 = Vec::new();
        let mut used2 = 0;
        for b in input {
            if g.ended() {
                break;
            }
            used2 += g.feed(std::slice::from_ref(b), &mut out2);
        }
        assert_eq!((&out, used, f.ended()), (&out2, used2, g.ended()), "{input:?}");
        (out, used, f.ended(), f.taint())
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_keeps_what_follows() {
        let input = b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, used, ended, taint) = run(input, true);
        assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\nbody\r\n");
        assert!(ended && taint.is_none());
        assert_eq!(input.get(used..), Some(&b"QUIT\r\n"[..]));
    }

    #[test]
    fn bare_lf_taints_and_cannot_end_the_text() {
        let (_, _, ended, taint) = run(b"a\n.\nMAIL FROM:<x@y>\r\n", true);
        assert!(!ended);
        assert_eq!(taint, Some(Taint::BareLf));
        let (_, used, ended, taint) = run(b"a\n.\r\nb\r\n.\r\nX", true);
        assert!(ended);
        assert_eq!(used, 11);
        assert_eq!(taint, Some(Taint::BareLf));
    }

    #[test]
    fn lf_mode_for_terminals() {
        let (out, _, ended, taint) = run(b"Subject: x\n\nhi\n.\n", false);
        assert_eq!(out, b"Subject: x\n\nhi\n");
        assert!(ended && taint.is_none());
    }

    #[test]
    fn nul_and_size_taint() {
        assert_eq!(run(b"a\0b\r\n.\r\n", true).3, Some(Taint::Nul));
        let mut f = DataFilter::new(true, 4);
        let mut out = Vec::new();
        f.feed(b"12345\r\n.\r\n", &mut out);
        assert!(f.ended());
        assert_eq!(f.taint(), Some(Taint::TooBig));
        assert_eq!(out, b"1234");
    }

    #[test]
    fn dot_cr_without_lf_is_data() {
        let (out, _, ended, _) = run(b".\rx\r\n.\r\n", true);
        assert!(ended);
        assert_eq!(out, b"\rx\r\n");
    }

    #[test]
    fn reader_fails_at_eof_and_on_taint() {
        let mut input: &[u8] = b"hello\r\nworld";
        let mut r = DataReader::new(&mut input, DataFilter::new(true, 100));
        let mut s = Vec::new();
        let e = r.read_to_end(&mut s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut input: &[u8] = b"a\0\r\n.\r\nNOOP\r\n";
        let mut r = DataReader::new(&mut input, DataFilter::new(true, 100));
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        r.drain().unwrap();
        assert_eq!(input, b"NOOP\r\n");
    }
}
