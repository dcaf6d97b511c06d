/*!
The on-disk entry format, version 1: what the helper writes and the runner
reads. It is specified for humans in `outq-spool(5)`.

```text
outq-entry 1\n
id 0692A1B2C3D4E5F60718293A4B\n
arrival 1764345835\n
uid 33\n
login www-data\n                        (only when the helper looked it up)
sender <www-data@host.example>\n        (or "sender <>")
rcpt <alice@example.org>\n              (one line per recipient, at least one)
size 00000000000000004096\n             (20 digits: the message's length)
\n
<size bytes of message, exactly as given>
\nEND\n                                   (trailer)
```

Every header line is printable ASCII. The header is self-describing and the
message is length-delimited, and the file must end with the trailer exactly
at `header + size`, so a truncated, extended or half-written file is
detected without trusting anything it says. The `uid` and `login` fields are
informational: the runner takes the submitter's identity from the file's
owner, which the caller cannot forge.

The size field has a fixed width so the helper can write the header first,
stream the message of unknown length after it, and fill the size in place
when the message is complete.
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, BufRead, Read};

use crate::address::{Mailbox, Sender};
use crate::queue_id::QueueId;

/// First line of every version 1 entry.
pub const MAGIC: &[u8] = b"outq-entry 1\n";
/// What follows the message.
pub const TRAILER: &[u8] = b"\nEND\n";
/// Width of the zero-padded size field.
pub const SIZE_WIDTH: usize = 20;
/// Longest header line accepted by the parser.
const MAX_LINE: usize = 1100;

/// The envelope and bookkeeping stored in front of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub id: QueueId,
    /// Arrival time, seconds since the epoch.
    pub arrival: u64,
    /// Submitter's real uid when it submitted (informational).
    pub uid: u32,
    /// Submitter's login name (informational), present only when the
    /// helper needed it (a default sender or a `submit_users` list); the
    /// runner names the submitter from the file's owner.
    pub login: Option<String>,
    pub sender: Sender,
    pub recipients: Vec<Mailbox>,
    /// Length of the message in bytes.
    pub size: u64,
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_recipients: usize,
    pub max_size: u64,
}

/// A serialised header and where its size field is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Offset of the first digit of the size field within `bytes`.
    pub size_offset: usize,
}

/// A login name as stored: printable ASCII without space, 1 to 64 bytes.
pub fn is_valid_login(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())
}

impl Header {
    /// Serialise; the size field holds `self.size`.
    pub fn encode(&self) -> Encoded {
        let mut out = Vec::with_capacity(160 + self.recipients.len() * 64);
        out.extend_from_slice(MAGIC);
        push_line(&mut out, "id", self.id.as_str());
        push_line(&mut out, "arrival", &self.arrival.to_string());
        push_line(&mut out, "uid", &self.uid.to_string());
        if let Some(login) = &self.login {
            push_line(&mut out, "login", login);
        }
        push_line(&mut out, "sender", &format!("<{}>", self.sender.as_str()));
        for r in &self.recipients {
            push_line(&mut out, "rcpt", &format!("<{r}>"));
        }
        out.extend_from_slice(b"size ");
        let size_offset = out.len();
        out.extend_from_slice(format_size(self.size).as_bytes());
        out.extend_from_slice(b"\n\n");
        Encoded { bytes: out, size_offset }
    }
}

/// The size field's text for `n`.
pub fn format_size(n: u64) -> String {
    format!("{n:0width$}", width = SIZE_WIDTH)
}

fn push_line(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b' ');
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// Why an entry was refused; each names the first rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    Io(String),
    BadMagic,
    Truncated,
    LineTooLong,
    Unexpected { expected: &'static str },
    BadValue { field: &'static str },
    NoRecipients,
    TooManyRecipients,
    TooLarge,
    LengthMismatch { file: u64, expected: u64 },
    BadTrailer,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Io(e) => write!(f, "read error: {e}"),
            FormatError::BadMagic => f.write_str("not an outq version 1 entry"),
            FormatError::Truncated => f.write_str("header is truncated"),
            FormatError::LineTooLong => f.write_str("header line too long"),
            FormatError::Unexpected { expected } => write!(f, "expected the {expected} line"),
            FormatError::BadValue { field } => write!(f, "invalid {field} field"),
            FormatError::NoRecipients => f.write_str("no recipients"),
            FormatError::TooManyRecipients => f.write_str("too many recipients"),
            FormatError::TooLarge => f.write_str("message larger than the size limit"),
            FormatError::LengthMismatch { file, expected } => {
                write!(f, "file is {file} bytes, header and size say {expected}")
            }
            FormatError::BadTrailer => f.write_str("trailer missing or damaged"),
        }
    }
}

impl std::error::Error for FormatError {}

impl From<io::Error> for FormatError {
    fn from(e: io::Error) -> FormatError {
        FormatError::Io(e.to_string())
    }
}

/// A parsed header and where the message starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub header: Header,
    /// Offset of the first message byte in the file.
    pub body_offset: u64,
}

impl Parsed {
    /// The total file length this header implies.
    pub fn expected_len(&self) -> u64 {
        self.body_offset.saturating_add(self.header.size).saturating_add(TRAILER.len() as u64)
    }
}

/// Read one header line (without its `\n`), refusing anything that is not
/// printable ASCII and anything longer than [`MAX_LINE`].
fn read_line<R: BufRead>(r: &mut R, consumed: &mut u64) -> Result<Vec<u8>, FormatError> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    *consumed += n as u64;
    match line.pop() {
        Some(b'\n') => {}
        Some(_) if line.len() >= MAX_LINE => return Err(FormatError::LineTooLong),
        _ => return Err(FormatError::Truncated),
    }
    Ok(line)
}

fn field<'a>(line: &'a [u8], key: &'static str) -> Result<&'a str, FormatError> {
    let rest = line
        .strip_prefix(key.as_bytes())
        .and_then(|r| r.strip_prefix(b" "))
        .ok_or(FormatError::Unexpected { expected: key })?;
    if !rest.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Err(FormatError::BadValue { field: key });
    }
    std::str::from_utf8(rest).map_err(|_| FormatError::BadValue { field: key })
}

fn decimal(s: &str, field: &'static str) -> Result<u64, FormatError> {
    // No sign, no empty string; leading zeros only in the fixed-width `size`.
    let leading_zero = s.len() > 1 && s.starts_with('0') && field != "size";
    if s.is_empty() || s.len() > SIZE_WIDTH || leading_zero || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FormatError::BadValue { field });
    }
    s.parse().map_err(|_| FormatError::BadValue { field })
}

fn bracketed<'a>(s: &'a str, field: &'static str) -> Result<&'a str, FormatError> {
    // Exactly one pair: no address starts with '<' or ends with '>', and
    // the address parsers would otherwise strip a second pair.
    match s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
        Some(inner) if !inner.starts_with('<') && !inner.ends_with('>') => Ok(inner),
        _ => Err(FormatError::BadValue { field }),
    }
}

/// Parse the header from `r`, positioned at the start of the file. Does not
/// read the message; see [`verify_layout`] for the length and trailer.
pub fn parse_header<R: BufRead>(r: &mut R, limits: &Limits) -> Result<Parsed, FormatError> {
    let mut consumed = 0u64;
    let first = read_line(r, &mut consumed).map_err(|_| FormatError::BadMagic)?;
    if MAGIC.strip_suffix(b"\n") != Some(first.as_slice()) {
        return Err(FormatError::BadMagic);
    }
    let line = read_line(r, &mut consumed)?;
    let id = QueueId::parse(field(&line, "id")?).ok_or(FormatError::BadValue { field: "id" })?;
    let arrival = decimal(field(&read_line(r, &mut consumed)?, "arrival")?, "arrival")?;
    let uid = decimal(field(&read_line(r, &mut consumed)?, "uid")?, "uid")?;
    let uid = u32::try_from(uid).map_err(|_| FormatError::BadValue { field: "uid" })?;
    let mut line = read_line(r, &mut consumed)?;
    let mut login = None;
    if line.starts_with(b"login ") {
        let name = field(&line, "login")?;
        if !is_valid_login(name) {
            return Err(FormatError::BadValue { field: "login" });
        }
        login = Some(name.to_owned());
        line = read_line(r, &mut consumed)?;
    }
    let sender = Sender::parse(bracketed(field(&line, "sender")?, "sender")?.as_bytes())
        .map_err(|_| FormatError::BadValue { field: "sender" })?;
    let mut recipients = Vec::new();
    let size = loop {
        let line = read_line(r, &mut consumed)?;
        if line.starts_with(b"rcpt ") {
            if recipients.len() >= limits.max_recipients {
                return Err(FormatError::TooManyRecipients);
            }
            let rcpt = Mailbox::parse(bracketed(field(&line, "rcpt")?, "rcpt")?.as_bytes())
                .map_err(|_| FormatError::BadValue { field: "rcpt" })?;
            recipients.push(rcpt);
            continue;
        }
        let text = field(&line, "size").map_err(|_| FormatError::Unexpected { expected: "rcpt or size" })?;
        if text.len() != SIZE_WIDTH {
            return Err(FormatError::BadValue { field: "size" });
        }
        break decimal(text, "size")?;
    };
    if recipients.is_empty() {
        return Err(FormatError::NoRecipients);
    }
    if size == 0 || size > limits.max_size {
        return Err(if size == 0 { FormatError::BadValue { field: "size" } } else { FormatError::TooLarge });
    }
    if !read_line(r, &mut consumed)?.is_empty() {
        return Err(FormatError::Unexpected { expected: "blank" });
    }
    let header = Header { id, arrival, uid, login, sender, recipients, size };
    Ok(Parsed { header, body_offset: consumed })
}

/// Check that a file of `file_len` bytes matches `parsed` and ends with the
/// trailer. `tail` must be the file's last `TRAILER.len()` bytes.
pub fn verify_layout(parsed: &Parsed, file_len: u64, tail: &[u8]) -> Result<(), FormatError> {
    let expected = parsed.expected_len();
    if file_len != expected {
        return Err(FormatError::LengthMismatch { file: file_len, expected });
    }
    if tail != TRAILER {
        return Err(FormatError::BadTrailer);
    }
    Ok(())
}

/// Parse a whole entry held in memory; returns the header and the message.
/// For tests and small tools; the runner streams.
pub fn parse_bytes<'a>(data: &'a [u8], limits: &Limits) -> Result<(Header, &'a [u8]), FormatError> {
    let mut cursor = io::Cursor::new(data);
    let parsed = parse_header(&mut cursor, limits)?;
    let tail = data.get(data.len().saturating_sub(TRAILER.len())..).unwrap_or(&[]);
    verify_layout(&parsed, data.len() as u64, tail)?;
    let start = usize::try_from(parsed.body_offset).map_err(|_| FormatError::Truncated)?;
    let end = start.saturating_add(usize::try_from(parsed.header.size).map_err(|_| FormatError::TooLarge)?);
    let body = data.get(start..end).ok_or(FormatError::Truncated)?;
    Ok((parsed.header, body))
}

/// Serialise a whole entry in memory (tests and tools; the helper streams).
pub fn to_bytes(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut h = header.clone();
    h.size = body.len() as u64;
    let mut out = h.encode().bytes;
    out.extend_from_slice(body);
    out.extend_from_slice(TRAILER);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_recipients: 1000, max_size: 10_240_000 };

    fn header() -> Header {
        Header {
            id: QueueId::parse("0692A1B2C3D4E5F60718293A4B").unwrap(),
            arrival: 1_764_345_835,
            uid: 33,
            login: Some("www-data".into()),
            sender: Sender::parse(b"www-data@host.example").unwrap(),
            recipients: vec![
                Mailbox::parse(b"alice@example.org").unwrap(),
                Mailbox::parse(b"\"b o b\"@[192.0.2.1]").unwrap(),
            ],
            size: 0,
        }
    }

    const BODY: &[u8] = b"Subject: hi\r\n\r\nbody\r\n.\r\nEND\n";

    #[test]
    fn round_trip() {
        let data = to_bytes(&header(), BODY);
        let (h, body) = parse_bytes(&data, &LIMITS).unwrap();
        assert_eq!(body, BODY);
        assert_eq!(h, Header { size: BODY.len() as u64, ..header() });
    }

    #[test]
    fn login_line_is_optional() {
        let h = Header { login: None, ..header() };
        let data = to_bytes(&h, BODY);
        assert!(!String::from_utf8_lossy(&data).contains("login"));
        let (back, _) = parse_bytes(&data, &LIMITS).unwrap();
        assert_eq!(back, Header { size: BODY.len() as u64, ..h });
    }

    #[test]
    fn round_trip_null_sender_and_exact_text() {
        let mut h = header();
        h.sender = Sender::Null;
        h.recipients.truncate(1);
        let data = to_bytes(&h, b"x");
        let text = String::from_utf8(data.clone()).unwrap();
        assert_eq!(
            text,
            "outq-entry 1\nid 0692A1B2C3D4E5F60718293A4B\narrival 1764345835\nuid 33\nlogin www-data\n\
sender <>\nrcpt <alice@example.org>\nsize 00000000000000000001\n\nx\nEND\n"
        );
        assert_eq!(parse_bytes(&data, &LIMITS).unwrap().0.sender, Sender::Null);
    }

    #[test]
    fn size_field_offset_points_at_the_digits() {
        let enc = Header { size: 42, ..header() }.encode();
        let digits = &enc.bytes[enc.size_offset..enc.size_offset + SIZE_WIDTH];
        assert_eq!(digits, format_size(42).as_bytes());
    }

    #[test]
    fn every_truncation_is_detected() {
        let data = to_bytes(&header(), BODY);
        for cut in 0..data.len() {
            assert!(parse_bytes(&data[..cut], &LIMITS).is_err(), "truncation at {cut} accepted");
        }
    }

    #[test]
    fn appended_bytes_are_detected() {
        let mut data = to_bytes(&header(), BODY);
        data.extend_from_slice(b"more");
        assert!(matches!(parse_bytes(&data, &LIMITS), Err(FormatError::LengthMismatch { .. })));
    }

    #[test]
    fn every_single_byte_corruption_of_the_header_or_trailer_is_rejected() {
        let data = to_bytes(&header(), BODY);
        let body_start = data.len() - TRAILER.len() - BODY.len();
        let body_end = data.len() - TRAILER.len();
        let mut accepted = Vec::new();
        for i in (0..data.len()).filter(|i| *i < body_start || *i >= body_end) {
            for replacement in [b'\n', b'\r', 0u8, b' ', b'<', b'Z', 0xff] {
                if data[i] == replacement {
                    continue;
                }
                let mut bad = data.clone();
                bad[i] = replacement;
                if let Ok((h, _)) = parse_bytes(&bad, &LIMITS) {
                    accepted.push((i, replacement, h));
                }
            }
        }
        // A few substitutions produce another valid header (a digit of the
        // arrival time, a letter of the login, a space inside the quoted
        // local part): they must still parse to a header that differs, never
        // to garbage. A control or 8-bit byte must always be refused.
        let quoted = String::from_utf8_lossy(&data).find("\"b o b\"").unwrap();
        for (i, b, h) in &accepted {
            assert!(![b'\n', b'\r', 0, 0xff].contains(b), "byte {i} -> {b:#x} accepted: {h:?}");
            assert!(*b != b' ' || (quoted..quoted + 7).contains(i), "space at {i} accepted: {h:?}");
            assert_ne!(*h, Header { size: BODY.len() as u64, ..header() });
        }
    }

    #[test]
    fn structural_corruptions_are_rejected() {
        let good = String::from_utf8(to_bytes(&header(), BODY)).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (good.replace("outq-entry 1", "outq-entry 2"), "version"),
            (good.replace("id 0692A1B2C3D4E5F60718293A4B", "id ../../etc/passwd"), "id"),
            (good.replace("arrival 1764345835\n", ""), "missing arrival"),
            (good.replace("uid 33", "uid -1"), "negative uid"),
            (good.replace("uid 33", "uid 033"), "leading zero in uid"),
            (good.replace("uid 33", "uid 99999999999"), "uid overflow"),
            (good.replace("login www-data", "login www data"), "space in login"),
            (good.replace("login www-data", "login "), "empty login"),
            (good.replace("sender <www-data@host.example>", "sender www-data@host.example"), "unbracketed sender"),
            (good.replace("rcpt <alice@example.org>", "rcpt <-alice@example.org>"), "dash recipient"),
            (good.replace("rcpt <alice@example.org>\n", "rcpt <alice@example.org>\r\n"), "CR in rcpt"),
            (good.replace("rcpt <alice@example.org>\nrcpt <\"b o b\"@[192.0.2.1]>\n", ""), "no recipients"),
            (good.replace("size 000000000000000000", "size 0000000000000000000"), "short size"),
            (good.replace("size 000000000000000000", "size +00000000000000000"), "signed size"),
            (good.replace("\n\nSubject", "\nx\nSubject"), "no blank line"),
            (good.replace("\nEND\n", "\nEND\r"), "bad trailer"),
            (good.replace("login www-data\n", "login www-data\nlogin root\n"), "duplicate field"),
            (good.replace("rcpt <alice@example.org>", "rcpt <<alice@example.org>>"), "double brackets"),
            (good.replace("sender <www-data@host.example>", "sender <<>>"), "double null sender"),
            (good.replace("id 0692A1B2C3D4E5F60718293A4B\narrival", "arrival"), "missing id"),
        ];
        for (text, what) in cases {
            assert!(parse_bytes(text.as_bytes(), &LIMITS).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn limits_are_enforced_on_read() {
        let data = to_bytes(&header(), BODY);
        let small = Limits { max_recipients: 1, max_size: 10_240_000 };
        assert_eq!(parse_bytes(&data, &small).unwrap_err(), FormatError::TooManyRecipients);
        let tiny = Limits { max_recipients: 10, max_size: 3 };
        assert_eq!(parse_bytes(&data, &tiny).unwrap_err(), FormatError::TooLarge);
    }

    #[test]
    fn overlong_line_is_rejected_without_reading_it_all() {
        let mut data = b"outq-entry 1\nid ".to_vec();
        data.extend(std::iter::repeat_n(b'A', 1 << 20));
        assert_eq!(parse_bytes(&data, &LIMITS).unwrap_err(), FormatError::LineTooLong);
    }
}
