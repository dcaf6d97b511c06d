//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target checks properties with `assert!`: a violated property is a
//! panic, which libFuzzer reports as a crash and saves as an artifact.
//!
//! A few properties are known not to hold (see README.md, "Known
//! findings"). By default the targets skip exactly those cases, so that a
//! long run keeps looking for new problems; with `OUTQ_FUZZ_STRICT=1` in the
//! environment they assert them too, which is how the inputs under
//! `regressions/` reproduce.

use std::sync::OnceLock;

/// Whether known, reported findings are asserted too (`OUTQ_FUZZ_STRICT=1`).
pub fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("OUTQ_FUZZ_STRICT").is_none_or(|v| v != "0"))
}

/// Print `what` once per process (for a known finding skipped in the
/// default mode, so a run still says it saw one).
pub fn note_once(flag: &'static OnceLock<()>, what: &str) {
    if flag.set(()).is_ok() {
        eprintln!("outq-fuzz: known finding seen (skipped; OUTQ_FUZZ_STRICT=1 asserts it): {what}");
    }
}

/// The promises of `outq_spool::address` for an accepted address: printable
/// ASCII, no space outside a quoted string, no leading `-`, at most 254
/// octets. Returns the first broken rule.
pub fn address_violation(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("empty");
    }
    if s.len() > 254 {
        return Some("longer than 254 octets");
    }
    if s.starts_with('-') {
        return Some("leading '-'");
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Some("not printable ASCII");
    }
    let (mut quoted, mut escaped) = (false, false);
    for b in s.bytes() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == b' ' {
            return Some("space outside quotes");
        }
    }
    if quoted {
        return Some("unterminated quoted string");
    }
    if !s.contains('@') {
        return Some("no '@'");
    }
    None
}

/// A small deterministic byte source for targets that derive several
/// values from one input.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    /// One byte, 0 when the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Everything not taken yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Split `data` into pieces of pseudo-random sizes from 1 to `max` (from
/// `seed`), to feed a streaming encoder the way a socket or a file would.
pub fn chunks(data: &[u8], seed: u32, max: usize) -> Vec<&[u8]> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((state >> 8) as usize % max.max(1)) + 1;
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}
