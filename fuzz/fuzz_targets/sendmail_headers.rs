//! outq-sendmail's header handling (`outq::sendmail::headers`): reading the
//! header section of a message from standard input, the `-t` recipient
//! extraction (with mail-parser), `Bcc:` removal and the added fields.
//!
//! Properties:
//! - `read_section` never panics and loses no byte: the fields, what ended
//!   the section and the rest of the input are the input (less a first
//!   `From ` line), whatever the reader's buffer size;
//! - `render` drops exactly the `Bcc:` and `Resent-Bcc:` fields, keeps the
//!   others byte for byte, and its output read again has the same fields
//!   plus the added ones;
//! - no `Bcc:` field survives on the wire: the rendered header section,
//!   encoded for DATA as the runner sends it, read again, has none
//!   (known finding, see README: a bare CR inside a field);
//! - `recipients` (the `-t` extraction) never panics (a mail-parser panic
//!   is caught by outq and is a refusal; it is reported here), and its
//!   error message is printable ASCII;
//! - `phrase`/`from_field`/`gecos_name` on a field's text make one line
//!   without control characters, and encoded words decode back.
#![no_main]

use std::cell::Cell;
use std::io::{BufReader, Read};
use std::sync::{Once, OnceLock};

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use outq::deliver::wire;
use outq::sendmail::headers::{self, End, Field, Section};
use outq_fuzz::{note_once, strict};

thread_local! {
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}
static HOOK: Once = Once::new();
static BARE_CR: OnceLock<()> = OnceLock::new();
static PARSER_PANIC: OnceLock<()> = OnceLock::new();

/// libfuzzer-sys's panic hook aborts at once, which would defeat the
/// `catch_unwind` outq puts around mail-parser. This hook only records the
/// panic (and prints it); a panic that nothing catches still aborts in
/// libfuzzer-sys's own `catch_unwind` around the target.
fn install_hook() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            default(info);
        }));
    });
}

/// Read the header section; `None` when it holds a bare CR, which
/// outq-sendmail refuses (a relay would see a line end the parser did not).
fn try_read(data: &[u8], cap: usize) -> Option<(Section, Vec<u8>)> {
    let mut r = BufReader::with_capacity(cap, data);
    match headers::read_section(&mut r) {
        Err(headers::ReadError::BareCr) => return None,
        Err(e) => panic!("read_section failed on a small input: {e:?}"),
        Ok(s) => {
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).expect("reading the rest");
            Some((s, rest))
        }
    }
}

fn read(data: &[u8], cap: usize) -> (Section, Vec<u8>) {
    try_read(data, cap).expect("read_section refused a section without a bare CR")
}

fn end_bytes(e: &End) -> &[u8] {
    match e {
        End::Blank(l) | End::BodyLine(l) => l,
        End::Eof => &[],
    }
}

fn is_blind(f: &Field) -> bool {
    f.is("Bcc") || f.is("Resent-Bcc")
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Whether `b` holds a CR not followed by LF.
fn has_bare_cr(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| c == b'\r' && b.get(i + 1) != Some(&b'\n'))
}

fn check_phrase(text: &[u8]) {
    let Some(name) = headers::valid_full_name(text) else { return };
    let from = headers::from_field("a@b.example", Some(name));
    assert!(!from.chars().any(char::is_control), "control character in {from:?}");
    assert!(from.is_ascii(), "non-ASCII From: field {from:?}");
    let name = name.trim();
    if !name.is_empty() && !name.is_ascii() {
        let p = headers::phrase(name);
        let mut decoded = Vec::new();
        for w in p.split(' ') {
            assert!(w.len() <= 75, "encoded word longer than 75: {w:?}");
            let b64 = w.strip_prefix("=?UTF-8?B?").and_then(|w| w.strip_suffix("?=")).expect("encoded word");
            decoded.extend(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64"));
        }
        assert_eq!(decoded, name.as_bytes(), "encoded words do not decode to the name");
    }
    if let Some(g) = headers::gecos_name(text, "alice") {
        assert!(!g.chars().any(char::is_control), "control character in GECOS name {g:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    install_hook();
    let Some((section, rest)) = try_read(data, 8 * 1024) else {
        // Refused: every buffer size must refuse it too.
        for cap in [1, 3] {
            assert!(try_read(data, cap).is_none(), "bare CR refused with one buffer size, not with {cap}");
        }
        return;
    };

    // Nothing lost, nothing invented.
    let skipped = if data.starts_with(b"From ") {
        data.iter().position(|&b| b == b'\n').map_or(data.len(), |i| i + 1)
    } else {
        0
    };
    let mut again: Vec<u8> = section.fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
    again.extend_from_slice(end_bytes(&section.end));
    again.extend_from_slice(&rest);
    assert_eq!(again, &data[skipped..], "fields + end + rest differ from the input");
    for cap in [1, 3] {
        let (s2, r2) = read(data, cap);
        assert_eq!((&s2, &r2), (&section, &rest), "read_section differs with a {cap}-byte buffer");
    }
    for f in &section.fields {
        assert!(!f.name().is_empty() && f.name().iter().all(|&b| (33..=126).contains(&b) && b != b':'));
        let lines: Vec<&[u8]> = f.raw.split_inclusive(|&b| b == b'\n').collect();
        for l in lines.iter().skip(1) {
            assert!(matches!(l.first(), Some(b' ' | b'\t')), "a field's later line is not a continuation");
        }
    }

    // render: Bcc fields dropped, the rest kept, added fields appended.
    let added = ["Date: d".to_owned(), "Message-ID: <m@x.example>".to_owned()];
    for add in [&added[..], &[]] {
        let out = headers::render(&section, add);
        let mut prefixed = b"X-Fuzz: 1".to_vec();
        prefixed.extend_from_slice(section.eol);
        prefixed.extend_from_slice(&out);
        let (back, _) = read(&prefixed, 8 * 1024);
        let kept: Vec<&Field> = section.fields.iter().filter(|f| !is_blind(f)).collect();
        let mut want: Vec<Vec<u8>> = kept.iter().map(|f| f.raw.clone()).collect();
        if !add.is_empty() {
            if let Some(last) = want.last_mut().filter(|l| !l.ends_with(b"\n")) {
                last.extend_from_slice(section.eol);
            }
        }
        for a in add {
            want.push([a.as_bytes(), section.eol].concat());
        }
        let got: Vec<Vec<u8>> = back.fields.iter().skip(1).map(|f| f.raw.clone()).collect();
        assert_eq!(got, want, "rendered header reads back differently");
        assert!(!back.fields.iter().any(is_blind), "a Bcc field survived render");

        // What the relay receives: the DATA encoding of the rendered header.
        let on_wire = wire::encode(&out);
        let (seen, _) = read(&on_wire, 8 * 1024);
        if let Some(f) = seen.fields.iter().find(|f| is_blind(f)) {
            let explained = has_bare_cr(&out);
            if strict() || !explained {
                panic!(
                    "a {} field reaches the wire: {:?}\nrendered: {:?}",
                    String::from_utf8_lossy(f.name()),
                    String::from_utf8_lossy(&f.raw),
                    String::from_utf8_lossy(&out)
                );
            }
            note_once(&BARE_CR, "sendmail_headers: a bare CR inside a field lets a Bcc: line reach the wire");
        }
    }

    // -t extraction.
    PANICKED.with(|p| p.set(false));
    let found = headers::recipients(&section.fields);
    if PANICKED.with(Cell::get) {
        if strict() {
            panic!("mail-parser panicked (caught by outq) on {:?}", String::from_utf8_lossy(data));
        }
        note_once(&PARSER_PANIC, "sendmail_headers: mail-parser panicked inside outq's catch_unwind");
    }
    match found {
        Ok(list) => {
            for r in &list {
                assert!(!r.is_empty(), "empty recipient");
                assert_eq!(r.trim_ascii(), r.as_slice(), "untrimmed recipient");
            }
        }
        Err(e) => assert!(printable(&e.what), "unescaped byte in {:?}", e.what),
    }
    let _ = headers::is_resent(&section.fields);

    // Display names.
    for f in section.fields.iter().take(8) {
        let colon = f.raw.iter().position(|&b| b == b':').unwrap_or(0);
        let value = &f.raw[colon + 1..];
        let first = value.split(|&b| b == b'\n').next().unwrap_or_default();
        check_phrase(first.strip_suffix(b"\r").unwrap_or(first));
    }
});
