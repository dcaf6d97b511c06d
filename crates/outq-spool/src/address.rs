/*!
Envelope address validation (RFC 5321 `Mailbox` and `Reverse-path`).

An address is checked once by the helper before it is written and again by
the runner after it is read, with this same code. What passes is plain
printable ASCII with no space outside a quoted local part, so it can be
written on one line of an entry and on an SMTP command line without escaping.

Accepted:
- `local@domain`, where `local` is a dot-string (`atext` runs separated by
  single dots) or a quoted string, at most 64 octets;
- `domain` is dot-separated LDH labels of 1–63 octets (no leading or trailing
  hyphen), or an address literal `[192.0.2.1]` / `[IPv6:2001:db8::1]`;
- the whole address at most 254 octets (RFC 5321's 256-octet path minus the
  angle brackets);
- optionally enclosed in one pair of angle brackets, which are removed.

Refused: control characters (CR, LF, NUL, TAB...), 8-bit bytes (SMTPUTF8 is
not offered), a leading `-` (it would read as an option to a program further
down the line), source routes, and anything else outside the grammar.
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest address accepted, without angle brackets.
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest domain label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why an address was refused. The message names the rule, never echoes the
/// raw bytes (the caller's terminal or log must not receive them unescaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    Empty,
    TooLong,
    LocalTooLong,
    ControlCharacter,
    NonAscii,
    LeadingDash,
    MissingAt,
    BadLocalPart,
    BadDomain,
    BadLiteral,
    Unbalanced,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            AddressError::Empty => "empty address",
            AddressError::TooLong => "address longer than 254 octets",
            AddressError::LocalTooLong => "local part longer than 64 octets",
            AddressError::ControlCharacter => "control character in address",
            AddressError::NonAscii => "non-ASCII byte in address",
            AddressError::LeadingDash => "address starts with '-'",
            AddressError::MissingAt => "address has no '@domain'",
            AddressError::BadLocalPart => "malformed local part",
            AddressError::BadDomain => "malformed domain",
            AddressError::BadLiteral => "malformed address literal",
            AddressError::Unbalanced => "unbalanced angle brackets",
        };
        f.write_str(s)
    }
}

impl std::error::Error for AddressError {}

/// A validated mailbox `local@domain` (never the null path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox(String);

impl Mailbox {
    /// Validate `raw` (optionally in angle brackets).
    pub fn parse(raw: &[u8]) -> Result<Mailbox, AddressError> {
        check_bytes(raw)?;
        let inner = strip_brackets(raw)?;
        check_mailbox(inner)?;
        // check_mailbox admits printable ASCII only, so this cannot fail.
        let s = std::str::from_utf8(inner).map_err(|_| AddressError::NonAscii)?;
        Ok(Mailbox(s.to_owned()))
    }

    /// Validate a bare local part and qualify it with `domain` (as a mail
    /// system does for `root` or `www-data`).
    pub fn parse_or_qualify(raw: &[u8], domain: &str) -> Result<Mailbox, AddressError> {
        check_bytes(raw)?;
        let inner = strip_brackets(raw)?;
        if inner.contains(&b'@') || inner.is_empty() {
            return Mailbox::parse(raw);
        }
        check_common(inner)?;
        if !is_dot_string(inner) {
            return Err(AddressError::BadLocalPart);
        }
        let mut full = inner.to_vec();
        full.push(b'@');
        full.extend_from_slice(domain.as_bytes());
        Mailbox::parse(&full)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An envelope sender: a mailbox or the null reverse-path `<>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    Null,
    Mailbox(Mailbox),
}

impl Sender {
    /// `""` and `"<>"` are the null sender; anything else must be a mailbox.
    pub fn parse(raw: &[u8]) -> Result<Sender, AddressError> {
        if raw.is_empty() || raw == b"<>" {
            return Ok(Sender::Null);
        }
        Mailbox::parse(raw).map(Sender::Mailbox)
    }

    /// The address as written in an entry and inside `MAIL FROM:<...>`:
    /// empty for the null sender.
    pub fn as_str(&self) -> &str {
        match self {
            Sender::Null => "",
            Sender::Mailbox(m) => m.as_str(),
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.as_str())
    }
}

fn strip_brackets(raw: &[u8]) -> Result<&[u8], AddressError> {
    match (raw.first(), raw.last()) {
        (Some(b'<'), Some(b'>')) if raw.len() >= 2 => Ok(raw.get(1..raw.len() - 1).unwrap_or(&[])),
        (Some(b'<'), _) | (_, Some(b'>')) => Err(AddressError::Unbalanced),
        _ => Ok(raw),
    }
}

/// Byte classes no address may contain, checked before anything else so the
/// most telling error is reported.
fn check_bytes(a: &[u8]) -> Result<(), AddressError> {
    if a.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(AddressError::ControlCharacter);
    }
    if a.iter().any(|&b| b >= 0x80) {
        return Err(AddressError::NonAscii);
    }
    Ok(())
}

/// Rules that hold for every address.
fn check_common(a: &[u8]) -> Result<(), AddressError> {
    if a.is_empty() {
        return Err(AddressError::Empty);
    }
    check_bytes(a)?;
    if a.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    if a.first() == Some(&b'-') {
        return Err(AddressError::LeadingDash);
    }
    Ok(())
}

fn check_mailbox(a: &[u8]) -> Result<(), AddressError> {
    check_common(a)?;
    // The domain never contains '@' or '"', so the last '@' splits the two
    // parts even when a quoted local part holds an '@'.
    let at = a.iter().rposition(|&b| b == b'@').ok_or(AddressError::MissingAt)?;
    let (local, domain) = (a.get(..at).unwrap_or(&[]), a.get(at + 1..).unwrap_or(&[]));
    if local.len() > MAX_LOCAL_LEN {
        return Err(AddressError::LocalTooLong);
    }
    if !(is_dot_string(local) || is_quoted_string(local)) {
        return Err(AddressError::BadLocalPart);
    }
    if domain.first() == Some(&b'[') {
        return check_literal(domain);
    }
    if is_domain(domain) { Ok(()) } else { Err(AddressError::BadDomain) }
}

/// RFC 5322 `atext`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_dot_string(s: &[u8]) -> bool {
    !s.is_empty() && s.split(|&b| b == b'.').all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)))
}

/// RFC 5321 `Quoted-string`: DQUOTE *(qtextSMTP / quoted-pairSMTP) DQUOTE.
fn is_quoted_string(s: &[u8]) -> bool {
    let inner = match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => return false,
    };
    let mut it = inner.iter();
    while let Some(&b) = it.next() {
        match b {
            b'\\' => match it.next() {
                Some(&q) if (0x20..=0x7e).contains(&q) => {}
                _ => return false,
            },
            b'"' => return false,
            0x20..=0x7e => {}
            _ => return false,
        }
    }
    true
}

/// Dot-separated LDH labels; the whole domain at most 253 octets.
pub fn is_domain(d: &[u8]) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
        })
}

fn check_literal(d: &[u8]) -> Result<(), AddressError> {
    let inner = match d {
        [b'[', inner @ .., b']'] => inner,
        _ => return Err(AddressError::BadLiteral),
    };
    let text = std::str::from_utf8(inner).map_err(|_| AddressError::BadLiteral)?;
    let ok = match text.strip_prefix("IPv6:") {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => text.parse::<Ipv4Addr>().is_ok(),
    };
    if ok { Ok(()) } else { Err(AddressError::BadLiteral) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(a: &str) {
        assert!(Mailbox::parse(a.as_bytes()).is_ok(), "should accept {a:?}");
    }
    fn bad(a: &[u8], e: AddressError) {
        assert_eq!(Mailbox::parse(a), Err(e), "should refuse {:?}", String::from_utf8_lossy(a));
    }

    #[test]
    fn accepts_rfc5321_mailboxes() {
        ok("user@example.org");
        ok("<user@example.org>");
        ok("first.last+tag@sub.example.org");
        ok("!#$%&'*+/=?^_`{|}~@example.org");
        ok("\"john doe\"@example.org");
        ok("\"a@b\"@example.org");
        ok("\"quote\\\"inside\"@example.org");
        ok("user@[192.0.2.1]");
        ok("user@[IPv6:2001:db8::1]");
        ok("user@localhost");
        ok("user@xn--bcher-kva.example");
        ok("user@123.example");
    }

    #[test]
    fn strips_angle_brackets() {
        let m = Mailbox::parse(b"<a@b.example>").unwrap();
        assert_eq!(m.as_str(), "a@b.example");
    }

    #[test]
    fn refuses_control_characters() {
        bad(b"a@b.example\r\nRCPT TO:<x@y>", AddressError::ControlCharacter);
        bad(b"a\n@b.example", AddressError::ControlCharacter);
        bad(b"a\0@b.example", AddressError::ControlCharacter);
        bad(b"a\t@b.example", AddressError::ControlCharacter);
        bad(b"a\x7f@b.example", AddressError::ControlCharacter);
        bad(b"\"a\rb\"@b.example", AddressError::ControlCharacter);
    }

    #[test]
    fn refuses_spaces_outside_quotes() {
        bad(b"a b@example.org", AddressError::BadLocalPart);
        bad(b"ab@exa mple.org", AddressError::BadDomain);
        bad(b" ab@example.org", AddressError::BadLocalPart);
    }

    #[test]
    fn refuses_leading_dash() {
        bad(b"-oQ/tmp@example.org", AddressError::LeadingDash);
        bad(b"<-x@example.org>", AddressError::LeadingDash);
    }

    #[test]
    fn refuses_non_ascii() {
        bad("jos\u{e9}@example.org".as_bytes(), AddressError::NonAscii);
        bad(b"a@\xff.example", AddressError::NonAscii);
    }

    #[test]
    fn enforces_lengths() {
        let local64 = "a".repeat(64);
        ok(&format!("{local64}@example.org"));
        bad(format!("{}@example.org", "a".repeat(65)).as_bytes(), AddressError::LocalTooLong);
        let label63 = "b".repeat(63);
        ok(&format!("a@{label63}.example"));
        bad(format!("a@{}.example", "b".repeat(64)).as_bytes(), AddressError::BadDomain);
        // 254 octets in all is the maximum.
        let domain = format!("{}.{}.{}.{}", "c".repeat(63), "d".repeat(63), "e".repeat(63), "f".repeat(60));
        let addr = format!("a@{domain}");
        assert_eq!(addr.len(), 254);
        ok(&addr);
        let addr = format!("ab@{domain}");
        bad(addr.as_bytes(), AddressError::TooLong);
    }

    #[test]
    fn refuses_malformed() {
        bad(b"", AddressError::Empty);
        bad(b"<>", AddressError::Empty);
        bad(b"user", AddressError::MissingAt);
        bad(b"@example.org", AddressError::BadLocalPart);
        bad(b"user@", AddressError::BadDomain);
        bad(b"a..b@example.org", AddressError::BadLocalPart);
        bad(b".a@example.org", AddressError::BadLocalPart);
        bad(b"a.@example.org", AddressError::BadLocalPart);
        bad(b"a@example..org", AddressError::BadDomain);
        bad(b"a@-example.org", AddressError::BadDomain);
        bad(b"a@example-.org", AddressError::BadDomain);
        bad(b"a@exa_mple.org", AddressError::BadDomain);
        bad(b"a@[300.1.1.1]", AddressError::BadLiteral);
        bad(b"a@[IPv6:zz::1]", AddressError::BadLiteral);
        bad(b"a@[192.0.2.1", AddressError::BadLiteral);
        bad(b"<a@example.org", AddressError::Unbalanced);
        bad(b"a@example.org>", AddressError::Unbalanced);
        bad(b"<<a@example.org>>", AddressError::BadLocalPart);
        bad(b"@relay:a@example.org", AddressError::BadLocalPart);
        bad(b"\"unterminated@example.org", AddressError::BadLocalPart);
        bad(b"\"a\"b\"@example.org", AddressError::BadLocalPart);
        bad(b"a(comment)@example.org", AddressError::BadLocalPart);
    }

    #[test]
    fn null_sender() {
        assert_eq!(Sender::parse(b""), Ok(Sender::Null));
        assert_eq!(Sender::parse(b"<>"), Ok(Sender::Null));
        assert_eq!(Sender::Null.as_str(), "");
        assert!(matches!(Sender::parse(b"a@b.example"), Ok(Sender::Mailbox(_))));
        assert_eq!(Sender::parse(b"< >"), Err(AddressError::MissingAt));
    }

    #[test]
    fn qualifies_bare_local_parts() {
        let m = Mailbox::parse_or_qualify(b"root", "host.example").unwrap();
        assert_eq!(m.as_str(), "root@host.example");
        let m = Mailbox::parse_or_qualify(b"a@b.example", "host.example").unwrap();
        assert_eq!(m.as_str(), "a@b.example");
        assert_eq!(Mailbox::parse_or_qualify(b"-root", "h.example"), Err(AddressError::LeadingDash));
        assert_eq!(Mailbox::parse_or_qualify(b"a b", "h.example"), Err(AddressError::BadLocalPart));
    }
}
