//! The spool entry parser (`outq_spool::entry`), as the runner reads a file
//! written by any local user through the helper.
//!
//! Properties, on every input:
//! - `parse_bytes` never panics; with generous limits it refuses or accepts;
//! - `parse_header` gives the same result whatever the reader's buffer size
//!   (the runner streams the file through a `BufReader`);
//! - on success: the body is `size` bytes, the file is exactly header +
//!   body + trailer, every address obeys the address rules, and re-encoding
//!   the header and body parses back to the same header and body.
//! - canonical form (strict mode only, see README "Known findings"): the
//!   re-encoding is byte-for-byte the input.
#![no_main]

use std::io::BufReader;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outq_fuzz::{address_violation, note_once, strict};
use outq_spool::entry::{self, Limits, TRAILER};

const LIMITS: Limits = Limits { max_recipients: 100_000, max_size: u64::MAX };

static NON_CANONICAL: OnceLock<()> = OnceLock::new();

/// `data` with the known non-canonical spelling undone: a `sender` or
/// `rcpt` value in two pairs of angle brackets gets one.
fn without_double_brackets(data: &[u8], body_offset: u64) -> Vec<u8> {
    let (head, rest) = data.split_at(usize::try_from(body_offset).unwrap_or(data.len()).min(data.len()));
    let mut out = Vec::with_capacity(data.len());
    for line in head.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let fixed = [&b"sender "[..], b"rcpt "].iter().find_map(|key| {
            let v = text.strip_prefix(*key)?.strip_prefix(b"<<")?.strip_suffix(b">>")?;
            Some([*key, b"<", v, b">\n"].concat())
        });
        out.extend_from_slice(fixed.as_deref().unwrap_or(line));
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let parsed = entry::parse_bytes(data, &LIMITS);

    // Streaming with small buffers must read the header the same way.
    let whole = entry::parse_header(&mut std::io::Cursor::new(data), &LIMITS);
    for cap in [1, 7, 64] {
        let streamed = entry::parse_header(&mut BufReader::with_capacity(cap, data), &LIMITS);
        assert_eq!(streamed, whole, "parse_header differs with a {cap}-byte buffer");
    }

    let Ok((header, body)) = parsed else { return };
    let whole = whole.expect("parse_bytes accepted what parse_header refused");
    assert_eq!(whole.header, header);
    assert_eq!(body.len() as u64, header.size, "body length differs from the size field");
    assert_eq!(whole.expected_len(), data.len() as u64);
    assert!(data.ends_with(TRAILER));
    assert!(!header.recipients.is_empty());
    for r in &header.recipients {
        if let Some(why) = address_violation(r.as_str()) {
            panic!("accepted recipient {:?}: {why}", r.as_str());
        }
    }
    let sender = header.sender.as_str();
    if !sender.is_empty() {
        if let Some(why) = address_violation(sender) {
            panic!("accepted sender {sender:?}: {why}");
        }
    }
    assert!(entry::is_valid_login(&header.login));

    // parse . encode round trip.
    let again = entry::to_bytes(&header, body);
    match entry::parse_bytes(&again, &LIMITS) {
        Ok((h2, b2)) => {
            assert_eq!(h2, header, "re-encoded header parses differently");
            assert_eq!(b2, body, "re-encoded body parses differently");
        }
        Err(e) => panic!("re-encoded entry refused: {e}"),
    }
    let enc = header.encode();
    assert_eq!(
        &enc.bytes[enc.size_offset..enc.size_offset + entry::SIZE_WIDTH],
        entry::format_size(header.size).as_bytes()
    );

    if again != data {
        // Known: an address written as <<a@b>> in the file is accepted
        // (Mailbox::parse strips a second pair of brackets).
        let explained = without_double_brackets(data, whole.body_offset) == again;
        if strict() || !explained {
            panic!(
                "accepted a non-canonical entry:\n input: {:?}\nencoded: {:?}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(&again)
            );
        }
        note_once(&NON_CANONICAL, "entry: an address in double angle brackets is accepted");
    }
});
