/*!
The SMTP DATA encoding of a message, streamed.

What reaches the wire:
- every line ends in CRLF: a bare LF, or a bare CR, ends a line too (a bare
  CR or LF must never reach a server: that is what SMTP smuggling abuses);
- a line starting with `.` gets a second `.` (RFC 5321 4.5.2);
- no line is longer than 998 octets: a longer line is broken with a CRLF
  after 998 octets (RFC 5321 4.5.3.1.6 allows no more; the alternative,
  refusing the message, would bounce mail the submitter cannot fix);
- an unterminated last line is terminated, then `.` CRLF ends the data.

Memory is constant: the encoder keeps one byte of state and the column.
*/
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

/// Longest line on the wire, without its CRLF.
pub const MAX_LINE: usize = 998;

/// Encodes message bytes for the DATA phase onto `out`.
#[derive(Debug)]
pub struct DataEncoder<W: Write> {
    out: W,
    /// Octets on the current wire line so far.
    column: usize,
    /// The previous input byte was a CR not yet known to be part of CRLF.
    pending_cr: bool,
    buf: Vec<u8>,
}

/// Bytes gathered before they are written out.
const FLUSH_AT: usize = 60 * 1024;

impl<W: Write> DataEncoder<W> {
    pub fn new(out: W) -> DataEncoder<W> {
        DataEncoder::with_capacity(out, 64 * 1024)
    }

    /// An encoder whose buffer starts at `capacity` bytes (a message's
    /// expected wire size, so a small one does not take 64 KiB).
    pub fn with_capacity(out: W, capacity: usize) -> DataEncoder<W> {
        DataEncoder { out, column: 0, pending_cr: false, buf: Vec::with_capacity(capacity.min(64 * 1024)) }
    }

    fn end_line(&mut self) {
        self.buf.extend_from_slice(b"\r\n");
        self.column = 0;
    }

    /// Append a run of bytes that holds no CR or LF: dot-stuffed at the
    /// start of a line, broken after [`MAX_LINE`] octets.
    fn push_run(&mut self, mut run: &[u8]) {
        while let Some(&first) = run.first() {
            if self.column >= MAX_LINE {
                self.end_line();
            }
            if self.column == 0 && first == b'.' {
                self.buf.push(b'.');
                self.column += 1;
            }
            let take = run.len().min(MAX_LINE - self.column);
            let (now, rest) = run.split_at(take);
            self.buf.extend_from_slice(now);
            self.column += take;
            run = rest;
        }
    }

    /// Encode `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.pending_cr {
                // A CR followed by LF, or by anything else: either way the
                // line ends here (a bare CR ends a line of its own).
                self.pending_cr = false;
                self.end_line();
                if data.first() == Some(&b'\n') {
                    data = data.get(1..).unwrap_or(&[]);
                    continue;
                }
            }
            let end = data.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(data.len());
            let (run, rest) = data.split_at(end);
            self.push_run(run);
            match rest.first() {
                Some(b'\n') => self.end_line(),
                Some(_) => self.pending_cr = true,
                None => {}
            }
            data = rest.get(1..).unwrap_or(&[]);
            if self.buf.len() >= FLUSH_AT {
                self.out.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Copy everything from `r`.
    pub fn copy_from(&mut self, r: &mut impl Read) -> io::Result<u64> {
        let mut chunk = [0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut chunk) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n as u64;
            self.write_all(chunk.get(..n).unwrap_or(&[]))?;
        }
    }

    /// Terminate the last line if needed, write `.` CRLF, flush, and return
    /// the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.pending_cr || self.column > 0 {
            self.end_line();
        }
        self.buf.extend_from_slice(b".\r\n");
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Encode a whole message held in memory (tests, small messages).
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut e = DataEncoder::new(Vec::new());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_line_ends() {
        assert_eq!(encode(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(encode(b"a\rb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(encode(b"a\r\r\nb\n"), b"a\r\n\r\nb\r\n.\r\n");
        assert_eq!(encode(b"x\r"), b"x\r\n.\r\n");
        assert_eq!(encode(b""), b".\r\n");
    }

    #[test]
    fn stuffs_dots() {
        assert_eq!(encode(b".\n..x\nmid.dle\n.end"), b"..\r\n...x\r\nmid.dle\r\n..end\r\n.\r\n");
    }

    #[test]
    fn smuggling_sequences_cannot_end_the_data_early() {
        let out = encode(b"x\n.\rMAIL FROM:<a@b>\r\n\n.\n");
        // The only "CRLF . CRLF" is the real end.
        let needle = b"\r\n.\r\n";
        let first = out.windows(5).position(|w| w == needle).unwrap();
        assert_eq!(first + 5, out.len());
        assert!(!out.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
    }

    #[test]
    fn breaks_long_lines() {
        let long = vec![b'a'; 2500];
        let out = encode(&long);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE + 1));
        let payload: usize = lines.iter().map(|l| l.iter().filter(|&&b| b == b'a').count()).sum();
        assert_eq!(payload, 2500);
    }

    #[test]
    fn a_dot_after_a_break_is_stuffed() {
        let mut line = vec![b'a'; MAX_LINE];
        line.extend_from_slice(b".\n");
        let out = encode(&line);
        assert!(out.starts_with(&[b'a'; MAX_LINE]));
        assert_eq!(&out[MAX_LINE..], b"\r\n..\r\n.\r\n");
    }

    /// The rules of the module header applied one byte at a time: the
    /// reference the run-based encoder must match.
    fn reference(data: &[u8]) -> Vec<u8> {
        let (mut out, mut column, mut cr) = (Vec::new(), 0usize, false);
        for &b in data {
            if cr {
                cr = false;
                out.extend_from_slice(b"\r\n");
                column = 0;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    column = 0;
                }
                b'\r' => cr = true,
                _ => {
                    if column >= MAX_LINE {
                        out.extend_from_slice(b"\r\n");
                        column = 0;
                    }
                    if column == 0 && b == b'.' {
                        out.push(b'.');
                        column += 1;
                    }
                    out.push(b);
                    column += 1;
                }
            }
        }
        if cr || column > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn matches_the_byte_by_byte_rules_on_random_input_in_random_pieces() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let len = (next() % 5000) as usize;
            // One message in three has long lines: line ends are rare.
            let odds = if next() % 3 == 0 { 5000 } else { 100 };
            let msg: Vec<u8> = (0..len)
                .map(|_| match next() % odds {
                    0..=4 => b'\r',
                    5..=9 => b'\n',
                    10..=14 => b'.',
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            let want = reference(&msg);
            assert_eq!(encode(&msg), want, "{:?}", String::from_utf8_lossy(&msg));
            let mut e = DataEncoder::with_capacity(Vec::new(), 10);
            let mut rest = msg.as_slice();
            while !rest.is_empty() {
                let (piece, more) = rest.split_at(((next() % 1200) as usize + 1).min(rest.len()));
                e.write_all(piece).unwrap();
                rest = more;
            }
            assert_eq!(e.finish().unwrap(), want);
        }
        let long_lines = [vec![b'x'; 3 * MAX_LINE + 5], b".".repeat(2 * MAX_LINE + 1)].concat();
        assert_eq!(encode(&long_lines), reference(&long_lines));
    }

    #[test]
    fn streams_in_pieces_like_in_one_go() {
        let msg = b"Subject: x\r\n\r\n.a\rb\n\r\n..c".repeat(50);
        let whole = encode(&msg);
        let mut e = DataEncoder::new(Vec::new());
        for piece in msg.chunks(7) {
            e.write_all(piece).unwrap();
        }
        assert_eq!(e.finish().unwrap(), whole);
    }
}
