//! The SMTP DATA encoder (`outq::deliver::wire::DataEncoder`): what reaches
//! the relay of a message any local user wrote.
//!
//! Input: byte 0 sets how often the payload is repeated (1 to 32, so lines
//! past 998 octets and output past the encoder's 60 KiB flush are
//! reached), bytes 1-2 seed the sizes of the pieces it is written in; the
//! rest is the payload.
//!
//! Properties: the output
//! - has no bare CR and no bare LF;
//! - has no line over 998 octets (CRLF not counted);
//! - has "CRLF . CRLF" (counting the CRLF that ends the DATA command line)
//!   only at its very end;
//! - equals a simple reference model (split into lines at CRLF, CR or LF;
//!   cut lines into pieces of at most 998 octets, a piece starting with
//!   '.' getting a second one; end with ".");
//! - un-stuffed, is the payload with normalised line ends (no byte lost);
//! - is the same whatever the pieces the payload is written in, and through
//!   `copy_from`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outq::deliver::wire::{self, DataEncoder, MAX_LINE};
use outq_fuzz::{Bytes, chunks};

/// Logical lines of `data`: each line end is CRLF, a CR or an LF; a last
/// line without an end counts if it is not empty.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.push(&data[start..i]);
                i += if data.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                start = i;
            }
            b'\n' => {
                out.push(&data[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < data.len() {
        out.push(&data[start..]);
    }
    out
}

/// The reference encoding.
fn model(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines(data) {
        let mut rest = line;
        loop {
            let stuffed = rest.first() == Some(&b'.');
            let room = MAX_LINE - usize::from(stuffed);
            let (piece, after) = rest.split_at(room.min(rest.len()));
            if stuffed {
                out.push(b'.');
            }
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
            if after.is_empty() {
                break;
            }
            rest = after;
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn check_wire(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    assert!(out.ends_with(b"\r\n"));
    let body = &out[..out.len() - 2];
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= MAX_LINE, "line {n} is {} octets", line.len());
    }
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(out);
    let ends: Vec<usize> = framed.windows(5).enumerate().filter(|(_, w)| w == b"\r\n.\r\n").map(|(i, _)| i).collect();
    assert_eq!(ends, [framed.len() - 5], "CRLF.CRLF inside the data");
}

/// The payload with line ends normalised to CRLF, recovered from the wire
/// the way a server reads it (un-stuffing leading dots, joining nothing:
/// broken long lines stay broken).
fn unstuff(out: &[u8]) -> Vec<u8> {
    let body = out.strip_suffix(b".\r\n").expect("final dot");
    let mut payload = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        payload.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    payload
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let repeat = usize::from(b.byte() % 32) + 1;
    let seed = u32::from(b.byte()) << 8 | u32::from(b.byte());
    let payload = b.rest().repeat(repeat);

    let whole = wire::encode(&payload);
    check_wire(&whole);
    assert_eq!(whole, model(&payload), "encoder differs from the reference model");

    // No byte lost or added: the content bytes, in order, are the payload's
    // bytes other than CR and LF.
    let content = |v: &[u8]| v.iter().copied().filter(|&c| c != b'\r' && c != b'\n').collect::<Vec<u8>>();
    assert_eq!(content(&unstuff(&whole)), content(&payload));

    let mut enc = DataEncoder::new(Vec::new());
    for piece in chunks(&payload, seed, 1 + (seed as usize % 300)) {
        enc.write_all(piece).expect("write to a Vec");
    }
    assert_eq!(enc.finish().expect("finish"), whole, "written in pieces, the encoding differs");

    let mut enc = DataEncoder::new(Vec::new());
    let n = enc.copy_from(&mut &payload[..]).expect("copy_from");
    assert_eq!(n, payload.len() as u64);
    assert_eq!(enc.finish().expect("finish"), whole, "through copy_from, the encoding differs");
});
