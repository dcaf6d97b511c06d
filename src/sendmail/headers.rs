/*!
The message's header section: reading it (bounded), taking recipients from
it for `-t`, removing `Bcc:`, and adding the `From:`, `Date:` and
`Message-ID:` fields a submission path adds when they are missing.

The header section is the run of header fields at the start of the
message: a field starts with a name of printable ASCII followed by `:`
(white space before the colon is tolerated, as RFC 5322's obsolete syntax
allows) and continues on lines starting with a space or tab. It ends at the
empty line, at end of input, or at the first line that is neither; such a
line starts the body, and an empty line is inserted before it so the added
fields cannot run into it. A first line `From ` (an mbox separator) is
removed, as sendmail and Postfix do. At most [`MAX_HEADER_BYTES`] are read;
the body is never held in memory.

Field bytes are kept exactly as read, line ends included; the added fields
use the line end of the message's first line (CRLF or LF).

Addresses in `To:`, `Cc:`, `Bcc:` and their `Resent-` forms are parsed by
the `mail-parser` crate (groups, display names, comments, encoded words),
not here. A mailbox written without a domain (`To: root`) reaches us as a
name without an address; a single word that is a valid local part is taken
as that bare local part, which the helper qualifies with `myhostname`.
*/
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Read};

use mail_parser::{HeaderValue, MessageParser};
use outq_spool::address::Mailbox;
use outq_spool::log::escape;

/// The largest header section read, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// One header field, exactly as read (all its lines, with their line ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub raw: Vec<u8>,
}

impl Field {
    /// The field name, without trailing white space.
    pub fn name(&self) -> &[u8] {
        let end = self.raw.iter().position(|&b| b == b':').unwrap_or(self.raw.len());
        trim_end_wsp(self.raw.get(..end).unwrap_or_default())
    }

    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name.as_bytes())
    }

    /// Everything after the colon.
    fn value(&self) -> &[u8] {
        match self.raw.iter().position(|&b| b == b':') {
            Some(i) => self.raw.get(i + 1..).unwrap_or_default(),
            None => &[],
        }
    }
}

/// What ended the header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The empty line (kept, with its line end).
    Blank(Vec<u8>),
    /// A line that is not a header field: the first line of the body.
    BodyLine(Vec<u8>),
    /// End of input (or the terminating `.` line).
    Eof,
}

/// The header section as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub fields: Vec<Field>,
    pub end: End,
    /// Line end for added fields: that of the message's first line.
    pub eol: &'static [u8],
}

#[derive(Debug)]
pub enum ReadError {
    TooLarge,
    /// A CR not followed by LF in the header section: the relay would see
    /// a line end that this parser did not (a hidden Bcc: field).
    BareCr,
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

fn trim_end_wsp(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |i| i + 1);
    s.get(..end).unwrap_or_default()
}

/// Whether `line` starts a header field: `name:` with a name of printable
/// ASCII other than `:`, optionally followed by white space before the colon.
fn starts_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
    let name = trim_end_wsp(line.get(..colon).unwrap_or_default());
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

/// Read one line of at most `room` bytes; `None` at end of input.
fn read_line<R: BufRead>(r: &mut R, room: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    let limit = u64::try_from(room).unwrap_or(u64::MAX).saturating_add(1);
    r.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if line.len() > room {
        return Err(ReadError::TooLarge);
    }
    Ok((!line.is_empty()).then_some(line))
}

/// Read the header section from the start of the message.
pub fn read_section<R: BufRead>(r: &mut R) -> Result<Section, ReadError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut used = 0usize;
    let mut eol: Option<&'static [u8]> = None;
    let mut first = true;
    let end = loop {
        let Some(line) = read_line(r, MAX_HEADER_BYTES - used)? else { break End::Eof };
        used += line.len();
        // Every CR must be the first half of a CRLF (also on a last line
        // without LF, which would be joined to what render adds).
        if line.iter().enumerate().any(|(i, &b)| b == b'\r' && line.get(i + 1) != Some(&b'\n')) {
            return Err(ReadError::BareCr);
        }
        if eol.is_none() && line.ends_with(b"\n") {
            eol = Some(if line.ends_with(b"\r\n") { b"\r\n" } else { b"\n" });
        }
        if std::mem::take(&mut first) && line.starts_with(b"From ") {
            continue;
        }
        if is_blank(&line) {
            break End::Blank(line);
        }
        let continues = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(last) if continues => last.raw.extend_from_slice(&line),
            _ if starts_field(&line) => fields.push(Field { raw: line }),
            _ => break End::BodyLine(line),
        }
    };
    Ok(Section { fields, end, eol: eol.unwrap_or(b"\n") })
}

/// Whether any `Resent-` field is present: then `-t` takes the recipients
/// from the `Resent-To:`, `Resent-Cc:` and `Resent-Bcc:` fields only.
pub fn is_resent(fields: &[Field]) -> bool {
    fields.iter().any(|f| f.name().len() > 7 && f.name().get(..7).is_some_and(|p| p.eq_ignore_ascii_case(b"resent-")))
}

/// The fields `-t` takes recipients from.
fn recipient_fields(resent: bool) -> &'static [&'static str] {
    if resent { &["Resent-To", "Resent-Cc", "Resent-Bcc"] } else { &["To", "Cc", "Bcc"] }
}

/// A recipient field that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError {
    pub what: String,
}

/// The recipients named in the header fields `-t` reads, in order.
pub fn recipients(fields: &[Field]) -> Result<Vec<Vec<u8>>, AddressError> {
    let wanted = recipient_fields(is_resent(fields));
    let mut out = Vec::new();
    for f in fields.iter().filter(|f| wanted.iter().any(|w| f.is(w))) {
        out.extend(field_addresses(f)?);
    }
    Ok(out)
}

/// Parse one address field with mail-parser.
fn field_addresses(field: &Field) -> Result<Vec<Vec<u8>>, AddressError> {
    let shown = escape(field.name());
    // Under a name the parser knows to hold addresses, whatever the field's
    // own spelling ("TO :" is the same field).
    let mut buf = b"To:".to_vec();
    buf.extend_from_slice(field.value());
    if !buf.ends_with(b"\n") {
        buf.push(b'\n');
    }
    buf.push(b'\n');
    // A parser bug on hostile input must be a refusal, not a crash.
    let parsed = std::panic::catch_unwind(|| {
        let msg = MessageParser::new().parse_headers(&buf)?;
        let value = msg.headers().first().map(|h| h.value().clone().into_owned());
        Some(value)
    });
    let value = match parsed {
        Ok(Some(Some(v))) => v,
        Ok(Some(None)) => return Ok(Vec::new()),
        Ok(None) | Err(_) => return Err(AddressError { what: format!("cannot parse the {shown} header") }),
    };
    let mut out = Vec::new();
    match value {
        HeaderValue::Address(list) => {
            for addr in list.iter() {
                match (addr.address.as_deref(), addr.name.as_deref()) {
                    (Some(a), _) if !a.trim().is_empty() => out.push(a.trim().as_bytes().to_vec()),
                    (None, Some(n)) if is_bare_local_part(n.trim()) => out.push(n.trim().as_bytes().to_vec()),
                    (_, n) => {
                        return Err(AddressError {
                            what: format!(
                                "the {shown} header names {} without an address",
                                escape(n.unwrap_or_default().as_bytes())
                            ),
                        });
                    }
                }
            }
        }
        HeaderValue::Empty => {}
        _ => return Err(AddressError { what: format!("cannot parse the {shown} header") }),
    }
    Ok(out)
}

/// A mailbox written without `@domain`, such as `root`.
fn is_bare_local_part(s: &str) -> bool {
    !s.is_empty() && !s.contains('@') && Mailbox::parse_or_qualify(s.as_bytes(), "localhost").is_ok()
}

/// Whether a field named `name` is present.
pub fn has(fields: &[Field], name: &str) -> bool {
    fields.iter().any(|f| f.is(name))
}

/// Fields never passed on: a blind copy's recipients must not be disclosed.
fn is_blind(f: &Field) -> bool {
    f.is("Bcc") || f.is("Resent-Bcc")
}

/// The header section to send: the fields read, minus `Bcc:` and
/// `Resent-Bcc:`, then `added` (whole lines without their line end), then
/// what ended the section.
pub fn render(section: &Section, added: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in section.fields.iter().filter(|f| !is_blind(f)) {
        out.extend_from_slice(&f.raw);
    }
    // A last field cut short by the end of input gets its line end back
    // before anything is added after it.
    if !added.is_empty() && !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(section.eol);
    }
    for line in added {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(section.eol);
    }
    match &section.end {
        End::Blank(line) => out.extend_from_slice(line),
        End::BodyLine(line) => {
            if !out.is_empty() {
                if !out.ends_with(b"\n") {
                    out.extend_from_slice(section.eol);
                }
                out.extend_from_slice(section.eol);
            }
            out.extend_from_slice(line);
        }
        End::Eof => {}
    }
    out
}

/// A display name as an RFC 5322 phrase: atoms as they are, other ASCII
/// as a quoted string, anything else as RFC 2047 encoded words. `name`
/// must hold no control characters.
pub fn phrase(name: &str) -> String {
    use base64::Engine;
    let name = name.trim();
    if name.is_ascii() {
        let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~ ".contains(c);
        if name.chars().all(atom) {
            return name.to_owned();
        }
        let mut q = String::from("\"");
        for c in name.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        return q;
    }
    // Encoded words of at most 75 characters: 45 bytes of UTF-8 make 60
    // of base64, plus the 12 of "=?UTF-8?B?" and "?=".
    let mut words = Vec::new();
    let mut piece = String::new();
    for c in name.chars() {
        if piece.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut piece));
        }
        piece.push(c);
    }
    if !piece.is_empty() {
        words.push(piece);
    }
    let engine = base64::engine::general_purpose::STANDARD;
    words.iter().map(|w| format!("=?UTF-8?B?{}?=", engine.encode(w.as_bytes()))).collect::<Vec<_>>().join(" ")
}

/// The `From:` field for `address` (already validated) and a full name.
pub fn from_field(address: &str, full_name: Option<&str>) -> String {
    match full_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => format!("From: {} <{address}>", phrase(n)),
        None => format!("From: {address}"),
    }
}

/// A full name usable in a header: UTF-8 without control characters.
pub fn valid_full_name(raw: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(raw).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

/// The full name from a password-database comment (GECOS) field: its first
/// comma-separated part, `&` standing for the capitalised login.
pub fn gecos_name(gecos: &[u8], login: &str) -> Option<String> {
    let first = gecos.split(|&b| b == b',').next().unwrap_or_default();
    let name = valid_full_name(first)?.trim();
    if name.is_empty() {
        return None;
    }
    let mut cap = String::new();
    let mut chars = login.chars();
    if let Some(c) = chars.next() {
        cap.extend(c.to_uppercase());
        cap.push_str(chars.as_str());
    }
    Some(name.replace('&', &cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn rest<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    fn section(input: &[u8]) -> (Section, Vec<u8>) {
        let mut r = io::BufReader::new(input);
        let s = read_section(&mut r).unwrap();
        let body = rest(&mut r).unwrap();
        (s, body)
    }

    fn names(s: &Section) -> Vec<String> {
        s.fields.iter().map(|f| String::from_utf8_lossy(f.name()).into_owned()).collect()
    }

    fn rcpts(input: &str) -> Vec<String> {
        let (s, _) = section(input.as_bytes());
        recipients(&s.fields).unwrap().into_iter().map(|r| String::from_utf8(r).unwrap()).collect()
    }

    #[test]
    fn splits_fields_and_keeps_their_bytes() {
        let input = b"To: a@b.example,\r\n\tc@d.example\r\nSubject : hi\r\n\r\nbody\r\n.\r\n";
        let (s, body) = section(input);
        assert_eq!(names(&s), ["To", "Subject"]);
        assert_eq!(s.fields[0].raw, b"To: a@b.example,\r\n\tc@d.example\r\n");
        assert_eq!(s.end, End::Blank(b"\r\n".to_vec()));
        assert_eq!(s.eol, b"\r\n");
        assert_eq!(body, b"body\r\n.\r\n");
    }

    #[test]
    fn a_non_header_line_starts_the_body() {
        let (s, body) = section(b"Subject: x\nhello world\nmore\n");
        assert_eq!(names(&s), ["Subject"]);
        assert_eq!(s.end, End::BodyLine(b"hello world\n".to_vec()));
        assert_eq!(body, b"more\n");
        assert_eq!(render(&s, &["Date: d".into()]), b"Subject: x\nDate: d\n\nhello world\n");
        let (s, _) = section(b" leading space\n");
        assert!(s.fields.is_empty());
        assert_eq!(render(&s, &[]), b" leading space\n");
    }

    #[test]
    fn mbox_from_line_is_dropped_and_headers_only_messages_work() {
        let (s, body) = section(b"From someone Sat Nov 28 10:00:00 2026\nSubject: x");
        assert_eq!(names(&s), ["Subject"]);
        assert_eq!(s.end, End::Eof);
        assert!(body.is_empty());
        assert_eq!(render(&s, &["Date: d".into()]), b"Subject: x\nDate: d\n");
        let (s, _) = section(b"");
        assert_eq!(render(&s, &["Date: d".into()]), b"Date: d\n");
    }

    #[test]
    fn header_section_is_bounded() {
        let mut big = b"X-Big: ".to_vec();
        big.resize(MAX_HEADER_BYTES + 10, b'a');
        let mut r = io::BufReader::new(&big[..]);
        assert!(matches!(read_section(&mut r), Err(ReadError::TooLarge)));
        let mut many = Vec::new();
        while many.len() <= MAX_HEADER_BYTES {
            many.extend_from_slice(b"X-A: b\n");
        }
        let mut r = io::BufReader::new(&many[..]);
        assert!(matches!(read_section(&mut r), Err(ReadError::TooLarge)));
    }

    #[test]
    fn a_bare_cr_in_the_header_section_is_refused() {
        let mut r = std::io::Cursor::new(b"To: a@b.example\rBcc: hidden@x.example\nSubject: hi\n\nbody\n".to_vec());
        assert!(matches!(read_section(&mut r), Err(ReadError::BareCr)));
        let mut r = std::io::Cursor::new(b"To: a@b.example\r\n\tc@d.example,\r".to_vec());
        assert!(matches!(read_section(&mut r), Err(ReadError::BareCr)));
        let mut r = std::io::Cursor::new(b"To: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n".to_vec());
        assert!(read_section(&mut r).is_ok());
    }

    #[test]
    fn recipients_from_to_cc_bcc() {
        let got = rcpts(
            "To: \"Doe, John\" <john@example.org>, root\nCc: team: a@example.org, B <b@example.org>;, (c) c@example.org\n\
             Bcc: hidden@example.org\nSubject: x\n\n",
        );
        assert_eq!(
            got,
            ["john@example.org", "root", "a@example.org", "b@example.org", "c@example.org", "hidden@example.org"]
        );
        assert_eq!(rcpts("To: undisclosed-recipients:;\n\n"), Vec::<String>::new());
        assert_eq!(rcpts("tO : <x@example.org>\n\n"), ["x@example.org"]);
        assert_eq!(rcpts("To: =?UTF-8?B?SsO2cmc=?= <j@example.org>\n\n"), ["j@example.org"]);
    }

    #[test]
    fn resent_fields_take_over() {
        let got = rcpts(
            "To: old@example.org\nResent-From: me@example.org\nResent-To: new@example.org\nResent-Bcc: b@example.org\n\n",
        );
        assert_eq!(got, ["new@example.org", "b@example.org"]);
    }

    #[test]
    fn a_name_without_address_is_refused() {
        let (s, _) = section(b"To: John Doe\n\n");
        let e = recipients(&s.fields).unwrap_err();
        assert!(e.what.contains("John Doe"), "{}", e.what);
    }

    #[test]
    fn bcc_is_removed_and_fields_added() {
        let (s, _) = section(b"To: a@example.org\nBcc: b@example.org\nresent-bcc: c@example.org\nSubject: s\n\nbody\n");
        let out = render(&s, &["Date: d".into()]);
        assert_eq!(out, b"To: a@example.org\nSubject: s\nDate: d\n\n");
    }

    #[test]
    fn phrases() {
        assert_eq!(phrase("Cron Daemon"), "Cron Daemon");
        assert_eq!(phrase("Doe, John"), "\"Doe, John\"");
        assert_eq!(phrase("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(phrase("Jörg"), "=?UTF-8?B?SsO2cmc=?=");
        let long = "é".repeat(40);
        let p = phrase(&long);
        assert!(p.split(' ').all(|w| w.len() <= 75 && w.starts_with("=?UTF-8?B?")), "{p}");
        assert_eq!(from_field("a@b.example", Some("A B")), "From: A B <a@b.example>");
        assert_eq!(from_field("a@b.example", None), "From: a@b.example");
        assert_eq!(from_field("a@b.example", Some("  ")), "From: a@b.example");
    }

    #[test]
    fn full_names() {
        assert_eq!(valid_full_name(b"A\r\nBcc: x"), None);
        assert_eq!(valid_full_name(b"\xff"), None);
        assert_eq!(gecos_name(b"& Smith,Room 1,,", "alice").as_deref(), Some("Alice Smith"));
        assert_eq!(gecos_name(b",,,", "alice"), None);
    }
}
