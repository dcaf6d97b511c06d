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

impl<W: Write> DataEncoder<W> {
    pub fn new(out: W) -> DataEncoder<W> {
        DataEncoder { out, column: 0, pending_cr: false, buf: Vec::with_capacity(64 * 1024) }
    }

    fn end_line(&mut self) {
        self.buf.extend_from_slice(b"\r\n");
        self.column = 0;
    }

    fn push_byte(&mut self, b: u8) {
        if self.column == 0 && b == b'.' {
            self.buf.push(b'.');
            self.column += 1;
        }
        if self.column >= MAX_LINE {
            self.end_line();
            if b == b'.' {
                self.buf.push(b'.');
                self.column += 1;
            }
        }
        self.buf.push(b);
        self.column += 1;
    }

    /// Encode `data`.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        for &b in data {
            match b {
                b'\n' => {
                    self.pending_cr = false;
                    self.end_line();
                }
                _ if self.pending_cr => {
                    // A bare CR ends a line of its own.
                    self.pending_cr = false;
                    self.end_line();
                    if b == b'\r' {
                        self.pending_cr = true;
                    } else {
                        self.push_byte(b);
                    }
                }
                b'\r' => self.pending_cr = true,
                _ => self.push_byte(b),
            }
            if self.buf.len() >= 60 * 1024 {
                self.out.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Copy everything from `r`.
    pub fn copy_from(&mut self, r: &mut impl Read) -> io::Result<u64> {
        let mut chunk = vec![0u8; 64 * 1024];
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
