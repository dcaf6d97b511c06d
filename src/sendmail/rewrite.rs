/*!
Address rewriting in header fields and on the command line: bare names
qualified with `myorigin`, and this host's name masqueraded.

Relays (Gmail, SES, Fastmail, Exim) refuse `From: root`, so every
unqualified mailbox in `From:`, `To:`, `Cc:`, `Reply-To:`, `Sender:` and
their `Resent-` forms gets `@myorigin`. With `masquerade_domain` set, an
address of this host (`myhostname`, `myorigin`, `localhost`, or bare) in
`From:` and `Resent-From:` gets the masquerade domain instead, for every
local part or only those in `masquerade_users`; outq-sendmail applies the
same rule to the envelope sender.

The field is rewritten in place: only the missing `@domain` is inserted,
or the domain replaced, so display names, comments, quoting, folding and
encoded words stay byte for byte. The RFC 5322 address list is tokenised
here (quoted strings, nested comments with quoted pairs, domain literals,
angle addresses, groups); a field that does not tokenise (an unterminated
quote or comment) is left exactly as it was, and a part that is not a
mailbox (`John Doe` without an address) is left alone too.
*/
#![forbid(unsafe_code)]

/// One lexical token of an address list, as a byte range of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Quoted,
    Literal,
    Special(u8),
    Atom,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Split `v` into tokens; `None` when a quote, comment or literal is not
/// closed.
fn tokens(v: &[u8]) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        let start = i;
        let kind = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                while matches!(v.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
                    i += 1;
                }
                Kind::Space
            }
            b'(' => {
                let mut depth = 0usize;
                loop {
                    match v.get(i)? {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                Kind::Comment
            }
            b'"' => {
                i += 1;
                loop {
                    match v.get(i)? {
                        b'\\' => i += 1,
                        b'"' => break,
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                Kind::Quoted
            }
            b'[' => {
                while *v.get(i)? != b']' {
                    i += usize::from(v.get(i) == Some(&b'\\')) + 1;
                }
                i += 1;
                Kind::Literal
            }
            b'<' | b'>' | b',' | b':' | b';' | b'@' | b'.' => {
                i += 1;
                Kind::Special(b)
            }
            // A closing parenthesis without its opening one.
            b')' => return None,
            _ => {
                i += 1;
                while v.get(i).is_some_and(|c| !b" \t\r\n()\"[<>,:;@.".contains(c)) {
                    i += 1;
                }
                Kind::Atom
            }
        };
        out.push(Token { kind, start, end: i });
    }
    Some(out)
}

fn significant(t: &Token) -> bool {
    !matches!(t.kind, Kind::Space | Kind::Comment)
}

/// A mailbox found in an address list: the significant tokens of its
/// addr-spec (inside the angle brackets, or the whole bare mailbox).
#[derive(Debug, Clone)]
struct Spec {
    toks: Vec<Token>,
}

impl Spec {
    fn at(&self) -> Option<usize> {
        self.toks.iter().rposition(|t| t.kind == Kind::Special(b'@'))
    }

    /// Whether the tokens form a local part: word *("." word), where a word
    /// is a quoted string or an atom of RFC 5322 `atext`.
    fn is_local_part(&self, v: &[u8]) -> bool {
        let atext = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(b);
        let word = |t: &Token| match t.kind {
            Kind::Quoted => true,
            Kind::Atom => v.get(t.start..t.end).is_some_and(|a| a.iter().all(atext)),
            _ => false,
        };
        !self.toks.is_empty()
            && self.toks.len() % 2 == 1
            && self
                .toks
                .iter()
                .enumerate()
                .all(|(i, t)| if i % 2 == 0 { word(t) } else { t.kind == Kind::Special(b'.') })
    }
}

/// The mailboxes of an address list, in order (group names and display
/// names skipped). `None` when the list does not tokenise.
fn specs(v: &[u8]) -> Option<Vec<Spec>> {
    let toks = tokens(v)?;
    let mut out = Vec::new();
    let mut seg: Vec<Token> = Vec::new();
    let mut in_angle = false;
    let finish = |seg: &mut Vec<Token>, out: &mut Vec<Spec>| {
        let sig: Vec<Token> = seg.drain(..).filter(significant).collect();
        let open = sig.iter().position(|t| t.kind == Kind::Special(b'<'));
        let spec = match open {
            Some(o) => {
                let inner = sig.get(o + 1..).unwrap_or_default();
                let close = inner.iter().position(|t| t.kind == Kind::Special(b'>')).unwrap_or(inner.len());
                let inner = inner.get(..close).unwrap_or_default();
                // A source route `@a,@b:` before the address is skipped.
                let from = inner.iter().rposition(|t| t.kind == Kind::Special(b':')).map_or(0, |c| c + 1);
                inner.get(from..).unwrap_or_default().to_vec()
            }
            None => sig,
        };
        if !spec.is_empty() {
            out.push(Spec { toks: spec });
        }
    };
    for t in toks {
        match t.kind {
            Kind::Special(b'<') => {
                in_angle = true;
                seg.push(t);
            }
            Kind::Special(b'>') => {
                in_angle = false;
                seg.push(t);
            }
            Kind::Special(b',' | b';') if !in_angle => finish(&mut seg, &mut out),
            // A group's name ends at its colon; its members follow.
            Kind::Special(b':') if !in_angle => seg.clear(),
            _ => seg.push(t),
        }
    }
    finish(&mut seg, &mut out);
    Some(out)
}

/// How addresses are rewritten.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    /// Appended to bare local parts (`myorigin`).
    pub origin: &'a str,
    /// This host's names, compared without case.
    pub local_domains: &'a [&'a str],
    /// The masquerade domain, when this field is masqueraded.
    pub masquerade: Option<&'a str>,
    /// Local parts masqueraded; empty: all.
    pub masquerade_users: &'a [String],
}

impl Rules<'_> {
    fn masquerades(&self, local: &str) -> Option<&str> {
        let m = self.masquerade?;
        let all = self.masquerade_users.is_empty();
        (all || self.masquerade_users.iter().any(|u| u.eq_ignore_ascii_case(local))).then_some(m)
    }

    fn is_local(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn text(v: &[u8], toks: &[Token]) -> String {
    toks.iter().map(|t| String::from_utf8_lossy(v.get(t.start..t.end).unwrap_or_default())).collect()
}

/// The edits for one field value: (start, end, replacement).
fn edits(v: &[u8], rules: &Rules<'_>) -> Option<Vec<(usize, usize, String)>> {
    let mut out = Vec::new();
    for spec in specs(v)? {
        match spec.at() {
            None if spec.is_local_part(v) => {
                let local = text(v, &spec.toks);
                let domain = rules.masquerades(&local).unwrap_or(rules.origin);
                let end = spec.toks.last().map_or(0, |t| t.end);
                out.push((end, end, format!("@{domain}")));
            }
            None => {}
            Some(at) => {
                let (local, domain) =
                    (spec.toks.get(..at).unwrap_or_default(), spec.toks.get(at + 1..).unwrap_or_default());
                let (Some(first), Some(last)) = (domain.first(), domain.last()) else { continue };
                if !rules.is_local(&text(v, domain)) {
                    continue;
                }
                if let Some(m) = rules.masquerades(&text(v, local)) {
                    out.push((first.start, last.end, m.to_owned()));
                }
            }
        }
    }
    Some(out)
}

/// The field `raw` (`Name: value` with its line ends) rewritten, or `None`
/// when nothing changes.
pub fn field(raw: &[u8], rules: &Rules<'_>) -> Option<Vec<u8>> {
    let colon = raw.iter().position(|&b| b == b':')?;
    let value = raw.get(colon + 1..)?;
    let edits = edits(value, rules)?;
    if edits.is_empty() {
        return None;
    }
    let mut out = raw.get(..=colon)?.to_vec();
    let mut pos = 0;
    for (start, end, with) in edits {
        out.extend_from_slice(value.get(pos..start)?);
        out.extend_from_slice(with.as_bytes());
        pos = end;
    }
    out.extend_from_slice(value.get(pos..)?);
    Some(out)
}

/// The addresses in one command-line word, which may be a list (`a,b`, as
/// cron passes `MAILTO`), a name address (`Name <a@b>`) or a word with a
/// trailing comma (`a,` of `MAILTO="a, b"`). A plain word is returned as
/// it is, for the helper to judge. `Err` names a part that holds no
/// address.
pub fn command_line(word: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let plain = !word.iter().any(|b| b" \t,<>()\"".contains(b));
    if plain {
        return Ok(vec![word.to_vec()]);
    }
    let list = specs(word).ok_or_else(|| "an unterminated quote or comment".to_owned())?;
    let mut out = Vec::new();
    for spec in list {
        let at = spec.at();
        // What is left between the separators must be one addr-spec: no
        // second angle bracket, no stray separator.
        let stray = spec.toks.iter().any(|t| matches!(t.kind, Kind::Special(c) if c != b'.' && c != b'@'));
        if stray || (at.is_none() && !spec.is_local_part(word)) {
            return Err(format!("{} is not an address", text(word, &spec.toks)));
        }
        out.push(text(word, &spec.toks).into_bytes());
    }
    Ok(out)
}

/// The envelope sender rewritten as `From:` is: qualified, masqueraded.
pub fn address(addr: &str, rules: &Rules<'_>) -> String {
    let (local, domain) = match addr.rsplit_once('@') {
        Some((l, d)) if !l.is_empty() => (l, Some(d)),
        _ => (addr, None),
    };
    match domain {
        None => format!("{local}@{}", rules.masquerades(local).unwrap_or(rules.origin)),
        Some(d) if rules.is_local(d) => match rules.masquerades(local) {
            Some(m) => format!("{local}@{m}"),
            None => addr.to_owned(),
        },
        Some(_) => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &[&str] = &["vm", "host.example", "localhost"];

    fn rules(masquerade: Option<&'static str>, users: &'static [String]) -> Rules<'static> {
        Rules { origin: "host.example", local_domains: LOCAL, masquerade, masquerade_users: users }
    }

    fn rw(raw: &str, r: &Rules<'_>) -> String {
        field(raw.as_bytes(), r).map_or_else(|| raw.to_owned(), |v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn bare_names_are_qualified_and_the_rest_kept() {
        let r = rules(None, &[]);
        assert_eq!(rw("From: root\n", &r), "From: root@host.example\n");
        assert_eq!(rw("From: root (Cron Daemon)\n", &r), "From: root@host.example (Cron Daemon)\n");
        assert_eq!(rw("To: a,b\n", &r), "To: a@host.example,b@host.example\n");
        assert_eq!(
            rw("To: \"Doe, John\" <john>, x@example.org,\r\n\tJane <jane@example.org>\r\n", &r),
            "To: \"Doe, John\" <john@host.example>, x@example.org,\r\n\tJane <jane@example.org>\r\n"
        );
        assert_eq!(
            rw("Cc: team: a, B <b>;, c\n", &r),
            "Cc: team: a@host.example, B <b@host.example>;, c@host.example\n"
        );
        assert_eq!(rw("To: \"john doe\"\n", &r), "To: \"john doe\"@host.example\n");
        assert_eq!(rw("To: first.last (x)\n", &r), "To: first.last@host.example (x)\n");
        assert_eq!(rw("To: undisclosed-recipients:;\n", &r), "To: undisclosed-recipients:;\n");
        assert_eq!(rw("To: =?UTF-8?B?SsO2cmc=?= <j>\n", &r), "To: =?UTF-8?B?SsO2cmc=?= <j@host.example>\n");
        assert_eq!(rw("Reply-To: <@relay.example:bob>\n", &r), "Reply-To: <@relay.example:bob@host.example>\n");
    }

    #[test]
    fn what_is_not_a_mailbox_is_left_alone() {
        let r = rules(None, &[]);
        for f in [
            "To: John Doe\n",
            "To: \"unterminated\n",
            "To: (open comment\n",
            "To: <>\n",
            "To: a@[192.0.2.1]\n",
            "To: a), b\n",
            "To: a]\n",
        ] {
            assert_eq!(rw(f, &r), f);
        }
    }

    #[test]
    fn masquerading() {
        let r = rules(Some("example.org"), &[]);
        assert_eq!(rw("From: root\n", &r), "From: root@example.org\n");
        assert_eq!(rw("From: Root <root@vm>\n", &r), "From: Root <root@example.org>\n");
        assert_eq!(rw("From: a@LOCALHOST, b@elsewhere.example\n", &r), "From: a@example.org, b@elsewhere.example\n");
        static ONLY: [String; 1] = [String::new()];
        let only: &'static [String] = &ONLY;
        let r = rules(Some("example.org"), only);
        assert_eq!(rw("From: root@vm\n", &r), "From: root@vm\n");
        assert_eq!(address("root", &r), "root@host.example");
        let users = Box::leak(Box::new(vec!["root".to_owned()]));
        let r = rules(Some("example.org"), users);
        assert_eq!(rw("From: root@vm, alice@vm\n", &r), "From: root@example.org, alice@vm\n");
        assert_eq!(address("root@host.example", &r), "root@example.org");
        assert_eq!(address("alice", &r), "alice@host.example");
        assert_eq!(address("root@other.example", &r), "root@other.example");
    }

    /// Random fields of the bytes that matter to the tokenizer: no panic,
    /// qualification only inserts, and a rewritten field needs no second
    /// rewrite.
    #[test]
    fn random_fields_only_gain_domains_and_are_stable() {
        const ALPHABET: &[u8] = b"(),:;<>@.\\\"[] \t\r\nab\x80\xff";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let r = rules(None, &[]);
        for _ in 0..100_000 {
            let len = (next() % 40) as usize;
            let mut raw = b"To:".to_vec();
            for _ in 0..len {
                raw.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            let _ = command_line(&raw[3..]);
            let Some(out) = field(&raw, &r) else { continue };
            // The input is a subsequence of the output.
            let mut it = out.iter();
            assert!(raw.iter().all(|b| it.any(|o| o == b)), "{raw:?} -> {out:?}");
            assert_eq!(field(&out, &r), None, "{raw:?} -> {out:?} changes again");
        }
    }

    #[test]
    fn command_line_forms() {
        let s = |w: &str| -> Vec<String> {
            command_line(w.as_bytes()).unwrap().into_iter().map(|v| String::from_utf8(v).unwrap()).collect()
        };
        assert_eq!(s("a@example.org"), ["a@example.org"]);
        assert_eq!(s("a@example.org,b@example.org"), ["a@example.org", "b@example.org"]);
        assert_eq!(s("root,"), ["root"]);
        assert_eq!(s("Jane Doe <jane@example.org>"), ["jane@example.org"]);
        assert_eq!(s("\"Doe, J\" <j@example.org>, k@example.org"), ["j@example.org", "k@example.org"]);
        assert_eq!(s("-oQ@example.org"), ["-oQ@example.org"]);
        assert!(command_line(b"John Doe").is_err());
        assert!(command_line(b"\"open").is_err());
        // Found by the sendmail_rewrite fuzz target: a nested angle bracket.
        assert!(command_line(b"oe <ja <joha,ne@exampld.org6>").is_err());
    }
}
