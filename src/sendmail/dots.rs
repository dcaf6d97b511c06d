/*!
The lone-dot rule of `sendmail`: without `-i` (or `-oi`), a line holding
only `.` ends the message.

[`DotReader`] wraps the caller's input and applies the rule while the
message streams through it: it stops at the terminating line (which is not
part of the message) and passes every other byte on unchanged. A line ends
with LF or CRLF; `.` followed by CR and something other than LF is
ordinary data. A final `.` without a line end, at end of input, is also the
terminator. There is no dot-unstuffing: a line starting `..` is kept as it
is, as sendmail and Postfix do outside SMTP.

With the rule off the reader is a plain pass-through.
*/
#![forbid(unsafe_code)]

use std::io::{self, Read};

/// Where the filter stands in the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (also the start of the input).
    LineStart,
    /// Somewhere after the first byte of a line.
    MidLine,
    /// A `.` at the start of a line, held back.
    Dot,
    /// `.` then CR at the start of a line, both held back.
    DotCr,
    /// The terminating line was seen: nothing more is passed on.
    Ended,
}

/// The rule as a pure state machine over chunks of input.
#[derive(Debug, Clone)]
pub struct DotFilter {
    state: State,
}

impl Default for DotFilter {
    fn default() -> DotFilter {
        DotFilter::new()
    }
}

impl DotFilter {
    pub fn new() -> DotFilter {
        DotFilter { state: State::LineStart }
    }

    /// Whether the terminating line has been seen.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Append what `input` contributes to the message to `out`. Bytes held
    /// back (a `.` that may start the terminator) are released by a later
    /// call or by [`DotFilter::finish`].
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match (self.state, b) {
                (State::Ended, _) => return,
                (State::LineStart, b'.') => State::Dot,
                (State::Dot, b'\n') | (State::DotCr, b'\n') => State::Ended,
                (State::Dot, b'\r') => State::DotCr,
                (State::Dot, _) => {
                    out.push(b'.');
                    out.push(b);
                    if b == b'\n' { State::LineStart } else { State::MidLine }
                }
                (State::DotCr, _) => {
                    out.extend_from_slice(b".\r");
                    out.push(b);
                    if b == b'\n' { State::LineStart } else { State::MidLine }
                }
                (State::LineStart | State::MidLine, b'\n') => {
                    out.push(b);
                    State::LineStart
                }
                (State::LineStart | State::MidLine, _) => {
                    out.push(b);
                    State::MidLine
                }
            };
        }
    }

    /// End of input: release what was held back. A lone `.` as the last
    /// line, without a line end, is the terminator and is dropped.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == State::DotCr {
            out.extend_from_slice(b".\r");
        }
        self.state = State::Ended;
    }
}

/// A reader that ends where the lone-dot rule says the message ends.
#[derive(Debug)]
pub struct DotReader<R> {
    inner: R,
    /// `None`: the rule is off (`-i`).
    filter: Option<DotFilter>,
    /// Filtered bytes not yet handed out.
    pending: Vec<u8>,
    pos: usize,
    chunk: Vec<u8>,
    done: bool,
}

const CHUNK: usize = 64 * 1024;

impl<R: Read> DotReader<R> {
    /// `dots`: apply the lone-dot rule.
    pub fn new(inner: R, dots: bool) -> DotReader<R> {
        DotReader {
            inner,
            filter: dots.then(DotFilter::new),
            pending: Vec::with_capacity(CHUNK + 2),
            pos: 0,
            chunk: vec![0; CHUNK],
            done: false,
        }
    }
}

impl<R: Read> Read for DotReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.pending.len() {
                let avail = self.pending.get(self.pos..).unwrap_or(&[]);
                let n = avail.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), avail.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.pending.clear();
            self.pos = 0;
            let n = self.inner.read(&mut self.chunk)?;
            let got = self.chunk.get(..n).unwrap_or(&[]);
            match &mut self.filter {
                None if n == 0 => self.done = true,
                None => self.pending.extend_from_slice(got),
                Some(f) if n == 0 => {
                    f.finish(&mut self.pending);
                    self.done = true;
                }
                Some(f) => {
                    f.feed(got, &mut self.pending);
                    // Stop reading at the terminator: what follows it is
                    // not part of the message and is left unread.
                    self.done = f.ended();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(input: &[u8], dots: bool, chunk: usize) -> Vec<u8> {
        // Feed in small pieces to exercise every state at a chunk boundary.
        struct Pieces<'a>(&'a [u8], usize);
        impl Read for Pieces<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = DotReader::new(Pieces(input, chunk), dots);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    fn all_chunkings(input: &[u8], dots: bool) -> Vec<u8> {
        let whole = through(input, dots, usize::MAX);
        for chunk in 1..8 {
            assert_eq!(through(input, dots, chunk), whole, "chunk size {chunk} for {input:?}");
        }
        whole
    }

    #[test]
    fn lone_dot_ends_the_message() {
        assert_eq!(all_chunkings(b"a\n.\nb\n", true), b"a\n");
        assert_eq!(all_chunkings(b"a\r\n.\r\nb\r\n", true), b"a\r\n");
        assert_eq!(all_chunkings(b".\nrest", true), b"");
        assert_eq!(all_chunkings(b"a\n.", true), b"a\n");
    }

    #[test]
    fn other_dots_are_data() {
        let keep: &[&[u8]] =
            &[b"a\n..\nb\n", b"a\n.b\n", b"a.\n", b"a\n .\n", b"a\n.\rb\n", b"a\n.\r\r\n", b"a\n.\r", b"x.\n.x\n"];
        for input in keep {
            assert_eq!(all_chunkings(input, true), *input, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn without_the_rule_everything_passes() {
        for input in [&b"a\n.\nb\n"[..], b".\n", b"a\r\n.\r\n"] {
            assert_eq!(all_chunkings(input, false), input);
        }
    }

    #[test]
    fn stops_at_the_terminator() {
        let mut input = &b"a\n.\nb\n"[..];
        let mut r = DotReader::new(&mut input, true);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"a\n");
        assert!(r.filter.as_ref().unwrap().ended());
    }
}
