/*!
NUL bytes in the caller's message, replaced before the helper sees them.

The helper refuses a message holding a NUL byte (SMTP cannot carry one,
and many relays cut the message at it). A program's output can hold one,
though (a cron job printing binary data), and that mail must not be lost.
So outq-sendmail replaces each NUL byte, in the header section and the
body alike, by the two characters `^@`, the way `cat -v` shows it:
printable ASCII in every character set, and visible to the reader. The
count is logged once per message.
*/
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// What a NUL byte becomes.
pub const REPLACEMENT: &[u8] = b"^@";

/// A reader that replaces NUL bytes of `inner`, counting them in `count`.
#[derive(Debug)]
pub struct NulReplacer<R> {
    inner: R,
    /// Replacement bytes not yet returned.
    pending: Vec<u8>,
    /// Read buffer, kept between reads.
    raw: Vec<u8>,
    pub count: Rc<Cell<u64>>,
}

impl<R: Read> NulReplacer<R> {
    pub fn new(inner: R) -> NulReplacer<R> {
        NulReplacer { inner, pending: Vec::new(), raw: Vec::new(), count: Rc::new(Cell::new(0)) }
    }
}

impl<R: Read> Read for NulReplacer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            // At most half the buffer is read, so the expansion fits.
            let half = (buf.len() / 2).max(1);
            self.raw.resize(half, 0);
            let n = self.inner.read(&mut self.raw)?;
            let mut nuls = 0u64;
            for &b in self.raw.get(..n).unwrap_or_default() {
                if b == 0 {
                    nuls += 1;
                    self.pending.extend_from_slice(REPLACEMENT);
                } else {
                    self.pending.push(b);
                }
            }
            self.count.set(self.count.get().saturating_add(nuls));
        }
        let n = self.pending.len().min(buf.len());
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(self.pending.get(..n).unwrap_or_default());
        self.pending.drain(..n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_counts() {
        let mut r = NulReplacer::new(&b"a\0b\0\0c"[..]);
        let count = r.count.clone();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"a^@b^@^@c");
        assert_eq!(count.get(), 3);
        // One-byte reads see the same bytes.
        let mut r = NulReplacer::new(&b"\0x\0"[..]);
        let mut out = Vec::new();
        let mut one = [0u8; 1];
        while r.read(&mut one).unwrap() == 1 {
            out.push(one[0]);
        }
        assert_eq!(out, b"^@x^@");
    }
}
