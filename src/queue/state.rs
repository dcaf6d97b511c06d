/*!
The runner's per-entry delivery state: `state/ID`, owned by the queue user.

Entries are immutable (written once by the helper, owned by the submitter),
so what the runner learns about an entry lives beside it in `state/`. No
state file means "never attempted": every recipient pending.

```text
outq-state 1
attempts 2
recoveries 0
next_attempt 1764346135
hold interrupted delivery 3 times            (only while held)
warned 1764349735                            (only after a delay notice)
last_error 451 4.3.0 try again later
rcpt <alice@example.org> sent 250 2.0.0 Ok
rcpt <bob@example.org> pending 451 4.3.0 try again later
rcpt <eve@example.org> failed 550 5.1.1 no such user
rcpt <admin@example.net> via <root@host.example> pending
end
```

`via <ENTRY-RECIPIENT>` (only on recipients that aliases produced) names
the entry recipient an address was expanded from (`crate::aliases`): a
state recipient stands for [`Rcpt::entry_recipient`], and reconciling a
state with its entry compares that, so an expansion is accepted exactly
when its origin is a recipient of the entry. Files without it read as
before.

The file is replaced atomically (temporary name, `fsync`, `rename`), and
its modification time is set to `next_attempt`, so a scan of `deferred/`
learns which entries are due with one `stat` each and without opening any
file. Texts that came from a server are escaped (no control bytes).

The `warned` line was added after version 1 was first written: a file
without it (every older file) reads as "no delay notice sent yet".
*/
#![forbid(unsafe_code)]

use std::fmt::Write;

use outq_spool::address::Mailbox;
use outq_spool::log::escape;

/// First line of a state file.
pub const MAGIC: &str = "outq-state 1";

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptStatus {
    Pending,
    Sent,
    Failed,
}

impl RcptStatus {
    fn word(self) -> &'static str {
        match self {
            RcptStatus::Pending => "pending",
            RcptStatus::Sent => "sent",
            RcptStatus::Failed => "failed",
        }
    }
}

/// One recipient and its last reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    pub address: Mailbox,
    /// The entry recipient `address` was expanded from by aliases; `None`
    /// when it is an entry recipient itself.
    pub origin: Option<Mailbox>,
    pub status: RcptStatus,
    /// Last reply or reason, escaped, one line (may be empty).
    pub reply: String,
}

/// The whole state of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub attempts: u32,
    /// Times the entry was found in `active/` after a runner died.
    pub recoveries: u32,
    /// Seconds since the epoch; also the state file's mtime.
    pub next_attempt: u64,
    pub hold: Option<String>,
    /// When the one delay notice was queued (`delay_warning_time`).
    pub warned: Option<u64>,
    pub last_error: String,
    pub recipients: Vec<Rcpt>,
}

impl State {
    /// The state of an entry never attempted.
    pub fn fresh(recipients: &[Mailbox]) -> State {
        State {
            attempts: 0,
            recoveries: 0,
            next_attempt: 0,
            hold: None,
            warned: None,
            last_error: String::new(),
            recipients: recipients
                .iter()
                .map(|a| Rcpt { address: a.clone(), origin: None, status: RcptStatus::Pending, reply: String::new() })
                .collect(),
        }
    }

    /// The recipients replaced by the alias expansion of the entry's
    /// (`(address, origin)` pairs, from `crate::aliases::expand`), all
    /// pending; everything else is kept.
    pub fn with_expansion(self, expanded: Vec<(Mailbox, Option<Mailbox>)>) -> State {
        let recipients = expanded
            .into_iter()
            .map(|(address, origin)| Rcpt { address, origin, status: RcptStatus::Pending, reply: String::new() })
            .collect();
        State { recipients, ..self }
    }

    pub fn pending(&self) -> impl Iterator<Item = &Rcpt> {
        self.recipients.iter().filter(|r| r.status == RcptStatus::Pending)
    }

    pub fn count(&self, status: RcptStatus) -> usize {
        self.recipients.iter().filter(|r| r.status == status).count()
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(128 + self.recipients.len() * 80);
        let _ = writeln!(out, "{MAGIC}");
        let _ = writeln!(out, "attempts {}", self.attempts);
        let _ = writeln!(out, "recoveries {}", self.recoveries);
        let _ = writeln!(out, "next_attempt {}", self.next_attempt);
        if let Some(h) = &self.hold {
            let _ = writeln!(out, "hold {}", clean(h));
        }
        if let Some(w) = self.warned {
            let _ = writeln!(out, "warned {w}");
        }
        let _ = writeln!(out, "last_error {}", clean(&self.last_error));
        for r in &self.recipients {
            match &r.origin {
                Some(o) => {
                    let _ = writeln!(out, "rcpt <{}> via <{o}> {} {}", r.address, r.status.word(), clean(&r.reply));
                }
                None => {
                    let _ = writeln!(out, "rcpt <{}> {} {}", r.address, r.status.word(), clean(&r.reply));
                }
            }
        }
        out.push_str("end\n");
        out
    }

    /// Parse a state file. Strict: anything unexpected is an error.
    pub fn parse(text: &str) -> Result<State, String> {
        if !text.ends_with("\nend\n") {
            return Err("missing end (truncated)".into());
        }
        // outq writes printable ASCII only (texts are escaped).
        if text.bytes().any(|b| b != b'\n' && !(0x20..0x7f).contains(&b)) {
            return Err("control or non-ASCII byte".into());
        }
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some(MAGIC) {
            return Err("not an outq state file".into());
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| format!("missing {name}"))?;
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("expected {name}"))
        };
        let num = |v: String, name: &str| v.parse::<u64>().map_err(|_| format!("bad {name}"));
        let attempts = u32::try_from(num(field("attempts")?, "attempts")?).map_err(|_| "bad attempts")?;
        let recoveries = u32::try_from(num(field("recoveries")?, "recoveries")?).map_err(|_| "bad recoveries")?;
        let next_attempt = num(field("next_attempt")?, "next_attempt")?;
        let mut rest: Vec<&str> = text.split_terminator('\n').skip(4).collect();
        let mut hold = None;
        if let Some(h) = rest.first().and_then(|l| l.strip_prefix("hold ")) {
            hold = Some(h.to_owned());
            rest.remove(0);
        }
        let mut warned = None;
        if let Some(w) = rest.first().and_then(|l| l.strip_prefix("warned ")) {
            warned = Some(num(w.to_owned(), "warned")?);
            rest.remove(0);
        }
        let mut it = rest.into_iter();
        let last_error = it.next().and_then(|l| l.strip_prefix("last_error ")).ok_or("expected last_error")?.to_owned();
        let mut recipients = Vec::new();
        for line in it.by_ref() {
            if line == "end" {
                return if it.next().is_none() {
                    Ok(State { attempts, recoveries, next_attempt, hold, warned, last_error, recipients })
                } else {
                    Err("data after end".into())
                };
            }
            recipients.push(parse_rcpt(line)?);
        }
        Err("missing end (truncated)".into())
    }
}

impl Rcpt {
    /// The entry recipient this state recipient stands for: its origin
    /// when aliases produced it, else its own address. Reconciliation of a
    /// state with its entry checks this against the entry's recipients.
    pub fn entry_recipient(&self) -> &Mailbox {
        self.origin.as_ref().unwrap_or(&self.address)
    }
}

/// The state of an entry as it may be trusted: the stored state (or why it
/// could not be read) reconciled with the entry's own recipients, and a
/// note for each thing that did not match. This is the only place where
/// the two are matched, so a new rule about which recipients belong to
/// an entry goes here.
///
/// - an entry recipient the state does not mention is pending;
/// - a state recipient the entry does not have is dropped, never delivered;
/// - a state that could not be read is rebuilt from the entry, every
///   recipient pending (re-sending is better than losing).
pub fn reconcile(stored: Result<Option<State>, String>, recipients: &[Mailbox]) -> (State, Vec<String>) {
    let mut notes = Vec::new();
    let old = match stored {
        Ok(Some(st)) => st,
        Ok(None) => return (State::fresh(recipients), notes),
        Err(why) => {
            notes.push(format!("{why}: state rebuilt from the entry, every recipient pending"));
            return (State::fresh(recipients), notes);
        }
    };
    let mut unused: Vec<Option<Rcpt>> = old.recipients.iter().cloned().map(Some).collect();
    let mut matched: Vec<Rcpt> = Vec::with_capacity(recipients.len());
    for want in recipients {
        if matched.iter().any(|r| belongs_to(r, want)) {
            // The entry names it twice: it is delivered once.
            continue;
        }
        // With aliases, one entry recipient may stand for several.
        let before = matched.len();
        matched.extend(
            unused.iter_mut().filter(|r| r.as_ref().is_some_and(|r| belongs_to(r, want))).filter_map(Option::take),
        );
        if matched.len() == before {
            notes.push(format!("<{want}> missing from the state: pending"));
            matched.push(Rcpt {
                address: want.clone(),
                origin: None,
                status: RcptStatus::Pending,
                reply: String::new(),
            });
        }
    }
    for r in unused.into_iter().flatten() {
        notes.push(format!("<{}> is in the state but not in the entry: dropped", r.address));
    }
    (State { recipients: matched, ..old }, notes)
}

/// Whether a state recipient stands for recipient `want` of the entry
/// (itself, or an address aliases expanded it to).
fn belongs_to(r: &Rcpt, want: &Mailbox) -> bool {
    r.entry_recipient() == want
}

/// The address at the start of `rest` (after its `<`), up to its closing
/// `>`, and what follows that `>`.
fn take_address(rest: &str) -> Result<(Mailbox, &str), String> {
    // Find the address's closing '>' from the left, by the address grammar:
    // a quoted local part is skipped as a whole (it may hold "> "), and a
    // domain never contains '>'. The reply that follows may hold anything.
    let bytes = rest.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'"') {
        i = 1;
        loop {
            match bytes.get(i) {
                Some(b'\\') => i += 2,
                Some(b'"') => break,
                Some(_) => i += 1,
                None => return Err("rcpt: unterminated quoted local part".into()),
            }
        }
    }
    let close = rest.get(i..).and_then(|r| r.find('>')).map(|j| i + j).ok_or("rcpt: no closing '>'")?;
    let address = Mailbox::parse(rest.get(..close).unwrap_or("").as_bytes()).map_err(|e| format!("rcpt: {e}"))?;
    Ok((address, rest.get(close + 1..).unwrap_or("")))
}

fn parse_rcpt(line: &str) -> Result<Rcpt, String> {
    let rest = line.strip_prefix("rcpt <").ok_or("expected rcpt")?;
    let (address, mut after) = take_address(rest)?;
    let mut origin = None;
    if let Some(via) = after.strip_prefix(" via <") {
        let (o, rest) = take_address(via)?;
        origin = Some(o);
        after = rest;
    }
    let (word, reply) = after.strip_prefix(' ').and_then(|a| a.split_once(' ')).ok_or("rcpt without status")?;
    let status = match word {
        "pending" => RcptStatus::Pending,
        "sent" => RcptStatus::Sent,
        "failed" => RcptStatus::Failed,
        _ => return Err(format!("rcpt: unknown status {word:?}")),
    };
    Ok(Rcpt { address, origin, status, reply: reply.to_owned() })
}

/// Escape an untrusted text (a server's reply) for the state file and logs.
pub fn one_line(s: &str) -> String {
    escape(s.as_bytes())
}

/// What the encoder writes: already-escaped text passes unchanged; any
/// control or non-ASCII byte left is escaped, so a line stays one line.
fn clean(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) { s.to_owned() } else { escape(s.as_bytes()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Mailbox {
        Mailbox::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn round_trip() {
        let mut s = State::fresh(&[addr("a@example.org"), addr("\"x> sent y\"@example.org"), addr("c@example.org")]);
        s.attempts = 2;
        s.next_attempt = 1_764_346_135;
        s.last_error = one_line("451 4.3.0 later\r\ninjected");
        s.recipients[0].status = RcptStatus::Sent;
        s.recipients[0].reply = "250 ok".into();
        s.recipients[2].status = RcptStatus::Failed;
        s.recipients[2].reply = "550 5.1.1 no".into();
        let text = s.encode();
        assert!(!text.contains("\r\ninjected"));
        let back = State::parse(&text).unwrap();
        assert_eq!(back.recipients[1].address.as_str(), "\"x> sent y\"@example.org");
        assert_eq!(back.recipients[1].status, RcptStatus::Pending);
        assert_eq!(back.count(RcptStatus::Sent), 1);
        assert_eq!(back.last_error, one_line("451 4.3.0 later\r\ninjected"));
        assert_eq!(State::parse(&back.encode()).unwrap(), back);
    }

    #[test]
    fn replies_that_look_like_status_words_round_trip() {
        let mut s = State::fresh(&[addr("a@example.org"), addr("\"x> sent y\"@example.org")]);
        s.recipients[0].reply = one_line("550 <a@example.org> sent > failed mailbox");
        s.recipients[1].reply = one_line("451 > pending > sent ");
        let back = State::parse(&s.encode()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn alias_origins_round_trip() {
        let s = State::fresh(&[addr("root@host.example")]).with_expansion(vec![
            (addr("a@example.net"), Some(addr("root@host.example"))),
            (addr("b@x.example"), None),
        ]);
        let text = s.encode();
        assert!(text.contains("rcpt <a@example.net> via <root@host.example> pending \n"), "{text}");
        let back = State::parse(&text).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.recipients[0].entry_recipient(), &addr("root@host.example"));
        assert_eq!(back.recipients[1].entry_recipient(), &addr("b@x.example"));
        // A reply that says "via" is a reply, not an origin.
        let mut s = State::fresh(&[addr("a@example.org")]);
        s.recipients[0].reply = "550 via <x@y.example>".into();
        assert_eq!(State::parse(&s.encode()).unwrap(), s);
        assert!(State::parse("outq-state 1\nattempts 0\nrecoveries 0\nnext_attempt 0\nlast_error \nrcpt <a@b.example> via <bad pending \nend\n").is_err());
    }

    #[test]
    fn hold_round_trips() {
        let mut s = State::fresh(&[addr("a@example.org")]);
        s.hold = Some("interrupted delivery 3 times".into());
        assert_eq!(State::parse(&s.encode()).unwrap().hold.as_deref(), Some("interrupted delivery 3 times"));
    }

    #[test]
    fn warned_is_optional_and_round_trips() {
        // A file written before the line existed reads as "not warned".
        let old = "outq-state 1\nattempts 1\nrecoveries 0\nnext_attempt 5\nhold held\nlast_error \n\
rcpt <a@example.org> pending \nend\n";
        let s = State::parse(old).unwrap();
        assert_eq!(s.warned, None);
        assert_eq!(s.hold.as_deref(), Some("held"));
        assert_eq!(s.encode(), old);
        let mut s = State::fresh(&[addr("a@example.org")]);
        s.warned = Some(1_764_349_735);
        let text = s.encode();
        assert!(text.contains("\nwarned 1764349735\nlast_error "));
        assert_eq!(State::parse(&text).unwrap(), s);
        s.hold = Some("x".into());
        assert_eq!(State::parse(&s.encode()).unwrap(), s);
        assert!(State::parse(&text.replace("warned 1764349735", "warned soon")).is_err());
        assert!(State::parse(&text.replace("warned 1764349735", "warned -1")).is_err());
    }

    #[test]
    fn reconcile_keeps_every_expansion_of_an_entry_recipient() {
        let mut st = State::fresh(&[]).with_expansion(vec![
            (addr("x@example.org"), Some(addr("root@example.org"))),
            (addr("y@example.org"), Some(addr("root@example.org"))),
        ]);
        st.recipients[0].status = RcptStatus::Sent;
        let entry = [addr("root@example.org"), addr("root@example.org")];
        let (got, notes) = reconcile(Ok(Some(st.clone())), &entry);
        assert_eq!(got.recipients, st.recipients);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn reconcile_drops_strangers_and_adds_the_missing() {
        let mut st = State::fresh(&[addr("a@example.org"), addr("x@example.org")]);
        st.recipients[0].status = RcptStatus::Sent;
        st.recipients[1].status = RcptStatus::Pending;
        st.attempts = 4;
        let entry = [addr("a@example.org"), addr("b@example.org")];
        let (got, notes) = reconcile(Ok(Some(st)), &entry);
        assert_eq!(got.attempts, 4);
        assert_eq!(got.recipients.len(), 2);
        assert_eq!(got.recipients[0].status, RcptStatus::Sent);
        assert_eq!(got.recipients[1].address, addr("b@example.org"));
        assert_eq!(got.recipients[1].status, RcptStatus::Pending);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let (got, notes) = reconcile(Err("state X: truncated".into()), &entry);
        assert_eq!(got, State::fresh(&entry));
        assert!(notes[0].contains("rebuilt"));
        let (got, notes) = reconcile(Ok(None), &entry);
        assert_eq!(got, State::fresh(&entry));
        assert!(notes.is_empty());
    }

    #[test]
    fn truncation_and_garbage_are_rejected() {
        let text = State::fresh(&[addr("a@example.org")]).encode();
        for cut in 0..text.len() {
            assert!(State::parse(&text[..cut]).is_err(), "cut at {cut}");
        }
        assert!(State::parse(&format!("{text}x\n")).is_err());
        assert!(State::parse(&text.replace("pending", "maybe")).is_err());
    }
}
