/*!
The text of a delivery status notification (RFC 3464), built in memory.

```text
multipart/report; report-type=delivery-status
├── text/plain                 which recipients, and why, for a human
├── message/delivery-status    Reporting-MTA, Arrival-Date, then per
│                              recipient [Original-Recipient,] Final-Recipient,
│                              Action, Status, Diagnostic-Code
└── text/rfc822-headers        the original message's header section
```

Lines end in LF, like a message given to `sendmail`; the SMTP transport
turns them into CRLF. Everything from outside (server replies, addresses)
is printable ASCII by the time it gets here: replies were escaped when the
state recorded them, addresses were validated. Only the copied original
headers may hold 8-bit bytes, and their part then says
`Content-Transfer-Encoding: 8bit`. Long fields are folded at spaces, and
replies are shortened, so no line exceeds RFC 5322's 998 octets.
*/
#![forbid(unsafe_code)]

use outq_spool::address::Mailbox;
use outq_spool::queue_id::QueueId;

use crate::date;

/// Which notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Delivery was given up: `Action: failed`.
    Failure,
    /// Still being tried after `delay_warning_time`: `Action: delayed`.
    Delay,
}

/// What is reported for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: Mailbox,
    /// The entry recipient an alias expanded into `address`, reported as
    /// `Original-Recipient` (RFC 3464 2.3.1).
    pub original: Option<Mailbox>,
    /// RFC 3463 enhanced status code, `5.1.1`, `4.4.7`...
    pub status: String,
    /// The reply to quote as `Diagnostic-Code: smtp; ...` (printable ASCII).
    pub diagnostic: Option<String>,
    /// One line for the human-readable part.
    pub reason: String,
}

/// Everything a notice says.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub kind: Kind,
    /// `myhostname`: the reporting MTA and the From domain.
    pub host: &'a str,
    /// The original envelope sender, who gets the notice.
    pub to: &'a Mailbox,
    /// The notice's own queue ID (Message-ID and MIME boundary).
    pub id: &'a QueueId,
    /// The queue ID of the message reported on.
    pub original: &'a QueueId,
    /// When the original message arrived.
    pub arrival: u64,
    pub now: u64,
    /// Delay notices: when delivery will be given up.
    pub retry_until: Option<u64>,
    pub recipients: Vec<Recipient>,
    /// The original header section (LF line ends), possibly empty.
    pub headers: &'a [u8],
}

/// Longest reply quoted in a field or a line of the human-readable part.
const MAX_REPLY: usize = 700;
/// Fold fields at this width when a space allows it.
const FOLD_AT: usize = 78;

pub const FAILURE_SUBJECT: &str = "Undelivered Mail Returned to Sender";
pub const DELAY_SUBJECT: &str = "Delayed Mail (still being retried)";

/// An RFC 3463 code `class.subject.detail` at the start of `tok`
/// (`5.1.1`), with the class among `2`, `4`, `5` and at most three digits
/// in the other two numbers.
fn enhanced(tok: &str) -> Option<(char, &str)> {
    let mut parts = tok.splitn(3, '.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    let c = match class {
        "2" => '2',
        "4" => '4',
        "5" => '5',
        _ => return None,
    };
    (digits(subject) && digits(detail)).then_some((c, tok))
}

/// The enhanced status code of class `class` (`'4'` or `'5'`) in a reply:
/// the first `NNN X.Y.Z` (or `NNN-X.Y.Z`) where the reply code and the
/// enhanced code both start with `class`. The reply may carry a prefix
/// (the pipe transport writes `program exit 1: 550 5.1.1 ...`).
pub fn status_in(reply: &str, class: char) -> Option<String> {
    let words: Vec<&str> = reply.split_ascii_whitespace().collect();
    let is_reply_code = |w: &str| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()) && w.starts_with(class);
    for (i, w) in words.iter().enumerate() {
        let candidate = match w.split_once('-') {
            Some((code, rest)) if is_reply_code(code) => Some(rest),
            _ if is_reply_code(w) => words.get(i + 1).copied(),
            _ => None,
        };
        if let Some((c, code)) = candidate.and_then(enhanced) {
            if c == class {
                return Some(code.to_owned());
            }
        }
    }
    None
}

/// At most `max` bytes of printable ASCII `s`, marked when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", s.get(..cut).unwrap_or(""))
}

/// `Name: value`, folded before a word when the line would pass
/// [`FOLD_AT`]; never leaves a line of only white space.
fn field(out: &mut String, name: &str, value: &str) {
    let mut col = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 || !word.is_empty() {
            if i > 0 && !word.is_empty() && col + 1 + word.len() > FOLD_AT && col > name.len() + 1 {
                out.push('\n');
                col = 0;
            }
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out.push('\n');
}

/// A duration for people: "2 days", "3 hours", "10 minutes", "45 seconds".
fn human_age(secs: u64) -> String {
    let (n, unit) = match secs {
        0..120 => (secs, "second"),
        120..7200 => (secs / 60, "minute"),
        7200..172_800 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The MIME boundary: the notice's random queue ID makes it unguessable
/// to whoever wrote the original headers.
pub fn boundary(id: &QueueId) -> String {
    format!("=_outq_{id}")
}

/// Whether `headers` can be attached under `boundary`.
pub fn fits(headers: &[u8], boundary: &str) -> bool {
    !headers.windows(boundary.len()).any(|w| w == boundary.as_bytes())
}

fn human_part(n: &Notice<'_>) -> String {
    let mut t = format!("This is outq, the mail queue at {}.\n\n", n.host);
    match n.kind {
        Kind::Failure => t.push_str(
            "Your message could not be delivered to one or more recipients, and\n\
             delivery to them has been given up. The reasons are below; the\n\
             original message's headers are attached.\n",
        ),
        Kind::Delay => {
            t.push_str(&format!(
                "This is a warning only. Your message has not been delivered yet to\n\
                 the recipients below after {} in the queue.\n",
                human_age(n.now.saturating_sub(n.arrival))
            ));
            if let Some(until) = n.retry_until {
                t.push_str(&format!("Delivery will be tried until {}.\n", date::rfc5322(until)));
            }
            t.push_str("You do not need to send the message again.\n");
        }
    }
    t.push_str(&format!("\nQueue ID: {}\n\n", n.original));
    for r in &n.recipients {
        t.push_str(&format!("<{}>: {}\n", r.address, shorten(&r.reason, MAX_REPLY)));
    }
    t
}

fn status_part(n: &Notice<'_>) -> String {
    let mut t = String::new();
    field(&mut t, "Reporting-MTA", &format!("dns; {}", n.host));
    field(&mut t, "X-Outq-Queue-ID", n.original.as_str());
    field(&mut t, "Arrival-Date", &date::rfc5322(n.arrival));
    let action = match n.kind {
        Kind::Failure => "failed",
        Kind::Delay => "delayed",
    };
    for r in &n.recipients {
        t.push('\n');
        if let Some(o) = &r.original {
            field(&mut t, "Original-Recipient", &format!("rfc822; {o}"));
        }
        field(&mut t, "Final-Recipient", &format!("rfc822; {}", r.address));
        field(&mut t, "Action", action);
        field(&mut t, "Status", &r.status);
        if let Some(d) = r.diagnostic.as_deref().filter(|d| !d.is_empty()) {
            field(&mut t, "Diagnostic-Code", &format!("smtp; {}", shorten(d, MAX_REPLY)));
        }
        field(&mut t, "Last-Attempt-Date", &date::rfc5322(n.now));
        if let Some(until) = n.retry_until {
            field(&mut t, "Will-Retry-Until", &date::rfc5322(until));
        }
    }
    t
}

/// The whole notice. `headers` that would collide with the boundary are
/// left out (see [`fits`]).
pub fn compose(n: &Notice<'_>) -> Vec<u8> {
    let b = boundary(n.id);
    let headers = if fits(n.headers, &b) { n.headers } else { &[] };
    let mut top = String::new();
    field(&mut top, "Date", &date::rfc5322(n.now));
    field(&mut top, "From", &format!("Mail Delivery System <MAILER-DAEMON@{}>", n.host));
    field(&mut top, "To", n.to.as_str());
    let subject = match n.kind {
        Kind::Failure => FAILURE_SUBJECT,
        Kind::Delay => DELAY_SUBJECT,
    };
    field(&mut top, "Subject", subject);
    field(&mut top, "Message-ID", &format!("<{}@{}>", n.id, n.host));
    field(&mut top, "Auto-Submitted", "auto-replied");
    field(&mut top, "MIME-Version", "1.0");
    field(&mut top, "Content-Type", &format!("multipart/report; report-type=delivery-status; boundary=\"{b}\""));
    top.push_str("\nThis is a MIME-encapsulated message.\n\n");
    top.push_str(&format!("--{b}\n"));
    field(&mut top, "Content-Description", "Notification");
    field(&mut top, "Content-Type", "text/plain; charset=us-ascii");
    top.push('\n');
    top.push_str(&human_part(n));
    top.push_str(&format!("\n--{b}\n"));
    field(&mut top, "Content-Description", "Delivery report");
    field(&mut top, "Content-Type", "message/delivery-status");
    top.push('\n');
    top.push_str(&status_part(n));
    top.push_str(&format!("\n--{b}\n"));
    let description = match n.kind {
        Kind::Failure => "Undelivered Message Headers",
        Kind::Delay => "Delayed Message Headers",
    };
    field(&mut top, "Content-Description", description);
    field(&mut top, "Content-Type", "text/rfc822-headers");
    if !headers.is_ascii() {
        field(&mut top, "Content-Transfer-Encoding", "8bit");
    }
    top.push('\n');
    let mut out = top.into_bytes();
    out.extend_from_slice(headers);
    if !headers.is_empty() && !headers.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("\n--{b}--\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_found_where_a_server_puts_them() {
        assert_eq!(status_in("550 5.1.1 <a@example.org>: no such user", '5').as_deref(), Some("5.1.1"));
        assert_eq!(status_in("550-5.7.1 policy", '5').as_deref(), Some("5.7.1"));
        assert_eq!(status_in("/usr/bin/x exit 1: 552 5.3.4 too big", '5').as_deref(), Some("5.3.4"));
        assert_eq!(status_in("451 4.3.0 try later", '4').as_deref(), Some("4.3.0"));
        // Class mismatch, no reply code, malformed codes: none.
        assert_eq!(status_in("451 4.3.0 try later", '5'), None);
        assert_eq!(status_in("550 4.1.1 odd", '5'), None);
        assert_eq!(status_in("5.1.1 alone", '5'), None);
        assert_eq!(status_in("550 5.1 short", '5'), None);
        assert_eq!(status_in("550 5.1.1000 long", '5'), None);
        assert_eq!(status_in("550 x.1.1", '5'), None);
        assert_eq!(status_in("", '5'), None);
        assert_eq!(status_in("550", '5'), None);
        assert_eq!(status_in("5500 5.1.1", '5'), None);
    }

    #[test]
    fn folding_keeps_lines_short_and_unfolds_to_the_value() {
        let value = "smtp; 550 5.1.1 ".to_owned() + &"word ".repeat(60) + " two  spaces";
        let mut out = String::new();
        field(&mut out, "Diagnostic-Code", &value);
        for line in out.lines() {
            assert!(line.len() <= FOLD_AT, "{line:?}");
            assert!(!line.trim().is_empty());
        }
        let unfolded = out.replace("\n ", " ");
        assert_eq!(unfolded, format!("Diagnostic-Code: {value}\n"));
        // One long word stays whole on its own line.
        let mut out = String::new();
        field(&mut out, "X", &format!("a {}", "b".repeat(100)));
        assert_eq!(out, format!("X: a\n {}\n", "b".repeat(100)));
    }

    #[test]
    fn shorten_marks_the_cut() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcdefgh", 6), "abc...");
        assert!(shorten(&"x".repeat(5000), MAX_REPLY).len() <= MAX_REPLY);
    }

    fn notice<'a>(kind: Kind, to: &'a Mailbox, id: &'a QueueId, headers: &'a [u8]) -> Notice<'a> {
        Notice {
            kind,
            host: "mx.example.org",
            to,
            id,
            original: id,
            arrival: 1_795_880_635,
            now: 1_795_884_235,
            retry_until: (kind == Kind::Delay).then_some(1_796_312_635),
            recipients: vec![Recipient {
                original: None,
                address: Mailbox::parse(b"bob@example.net").unwrap(),
                status: "5.1.1".into(),
                diagnostic: Some("550 5.1.1 no such user".into()),
                reason: "550 5.1.1 no such user".into(),
            }],
            headers,
        }
    }

    #[test]
    fn structure() {
        let to = Mailbox::parse(b"alice@example.org").unwrap();
        let id = QueueId::parse("06929C7EB1E240ABCDEF012345").unwrap();
        let text = String::from_utf8(compose(&notice(Kind::Failure, &to, &id, b"Subject: hi\n"))).unwrap();
        let b = boundary(&id);
        assert_eq!(text.matches(&format!("\n--{b}\n")).count(), 3);
        assert!(text.ends_with(&format!("\n--{b}--\n")));
        for needle in [
            "\nFrom: Mail Delivery System <MAILER-DAEMON@mx.example.org>\n",
            "\nTo: alice@example.org\n",
            "\nSubject: Undelivered Mail Returned to Sender\n",
            "\nAuto-Submitted: auto-replied\n",
            "\nReporting-MTA: dns; mx.example.org\n",
            "\nArrival-Date: Sat, 28 Nov 2026 15:43:55 +0000\n",
            "\n\nFinal-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\n",
            "\nDiagnostic-Code: smtp; 550 5.1.1 no such user\n",
            "Content-Type: text/rfc822-headers\n\nSubject: hi\n\n--",
            "<bob@example.net>: 550 5.1.1 no such user\n",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert!(!text.contains("Content-Transfer-Encoding"));
        assert!(text.lines().all(|l| l.len() <= 998));
    }

    #[test]
    fn an_aliased_recipient_names_its_original() {
        let to = Mailbox::parse(b"alice@example.org").unwrap();
        let id = QueueId::parse("06929C7EB1E240ABCDEF012345").unwrap();
        let mut n = notice(Kind::Failure, &to, &id, b"Subject: hi\n");
        n.recipients[0].original = Some(Mailbox::parse(b"root@host.example").unwrap());
        let text = String::from_utf8(compose(&n)).unwrap();
        let want = "\n\nOriginal-Recipient: rfc822; root@host.example\nFinal-Recipient: rfc822; bob@example.net\n";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn delay_notice_and_eight_bit_headers() {
        let to = Mailbox::parse(b"alice@example.org").unwrap();
        let id = QueueId::parse("06929C7EB1E240ABCDEF012345").unwrap();
        let text = compose(&notice(Kind::Delay, &to, &id, "Subject: caf\u{e9}".as_bytes()));
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("\nAction: delayed\n"));
        assert!(text.contains("\nWill-Retry-Until: "));
        assert!(text.contains("after 60 minutes in the queue"));
        assert!(text.contains("Content-Transfer-Encoding: 8bit\n\nSubject: caf\u{e9}\n\n--"));
    }

    #[test]
    fn headers_holding_the_boundary_are_left_out() {
        let to = Mailbox::parse(b"alice@example.org").unwrap();
        let id = QueueId::parse("06929C7EB1E240ABCDEF012345").unwrap();
        let evil = format!("X: --{}--\n", boundary(&id));
        let text = String::from_utf8(compose(&notice(Kind::Failure, &to, &id, evil.as_bytes()))).unwrap();
        assert!(!text.contains("X: --"));
    }

    #[test]
    fn ages_for_people() {
        assert_eq!(human_age(1), "1 second");
        assert_eq!(human_age(90), "90 seconds");
        assert_eq!(human_age(3600), "60 minutes");
        assert_eq!(human_age(4 * 3600), "4 hours");
        assert_eq!(human_age(3 * 86_400), "3 days");
    }
}
