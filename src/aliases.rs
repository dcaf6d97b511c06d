/*!
The aliases file (`alias_file`, default `/etc/aliases`) and the
`admin_address` catch-all: where mail for this host's local names goes.

outq is a null client: it delivers nothing on this host, so every alias
must end at a full address another host accepts. The runner applies
aliases once, when it first takes an entry (see `runner::claim`), and
records for each expanded recipient the entry recipient it came from, so
a later attempt delivers the same list even if the file changed.

Syntax, that of `/etc/aliases` (aliases(5)):

```text
# comment
root:     admin@example.org, ops@example.org
postmaster: root
www-data: root,
          webmaster@example.org        (a line starting with white space continues)
```

A name is a local part (matched without regard to case); a target is a
full address, or a bare local name that is itself looked up. A name that
names itself (`root: root` or `root: \root`) stops there. Targets a null
client cannot honour, `|command`, `/file` and `:include:/file`, are
refused with a log line, and the name then falls back as if it had no
alias. Malformed lines are reported ([`Aliases::problems`]) and skipped;
the rest of the file still applies.

An address is local when its domain is one of [`Aliasing::local_domains`]
(`myhostname`, `myorigin`, `localhost`); bare names were qualified with
`myhostname` by the helper. A local name with no alias (after the lookup,
or on a loop) goes to `admin_address` when set (itself never looked up
again), and otherwise becomes `name@myorigin` and goes to the relay, as
without aliases (with the default `myorigin`, the address is unchanged). Nothing is ever dropped: every entry recipient yields at
least one address.
*/
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use outq_spool::address::Mailbox;
use outq_spool::log::escape;

use crate::config::Aliasing;

/// The largest aliases file read.
pub const MAX_ALIAS_FILE: u64 = 1024 * 1024;
/// Most addresses one entry recipient may expand to.
pub const MAX_EXPANSION: usize = 1000;
/// Deepest chain of names followed.
pub const MAX_DEPTH: usize = 20;

/// One target of an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A full address (looked up again only if it is local).
    Address(Mailbox),
    /// A bare name, looked up in turn; `stop` for `\name` (no lookup).
    Name { name: String, stop: bool },
    /// `|command`, `/file` or `:include:` — not delivered by a null client.
    Unsupported(String),
}

/// A parsed aliases file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    /// By lower-cased name.
    map: BTreeMap<String, Vec<Target>>,
    /// Lines skipped, `line N: why`, for the log and `newaliases`.
    pub problems: Vec<String>,
}

/// Where one entry recipient went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub addresses: Vec<Mailbox>,
    /// What happened on the way, for the log (escaped).
    pub notes: Vec<String>,
}

/// Split a value at commas outside double quotes.
fn split_targets(value: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                cur.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                cur.push(c);
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()
}

fn parse_target(raw: &str) -> Result<Target, String> {
    let unquoted = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if inner.starts_with('|') || inner.starts_with('/') || inner.starts_with(":include:") => inner,
        _ => raw,
    };
    if unquoted.starts_with('|') || unquoted.starts_with('/') || unquoted.to_ascii_lowercase().starts_with(":include:")
    {
        return Ok(Target::Unsupported(unquoted.to_owned()));
    }
    let (name, stop) = match unquoted.strip_prefix('\\') {
        Some(n) => (n, true),
        None => (unquoted, false),
    };
    if name.contains('@') {
        let inner = name.strip_prefix('<').and_then(|n| n.strip_suffix('>')).unwrap_or(name);
        return Mailbox::parse(inner.as_bytes())
            .map(Target::Address)
            .map_err(|e| format!("target {}: {e}", escape(raw.as_bytes())));
    }
    match Mailbox::parse_or_qualify(name.as_bytes(), "localhost") {
        Ok(_) => Ok(Target::Name { name: name.to_ascii_lowercase(), stop }),
        Err(e) => Err(format!("target {}: {e}", escape(raw.as_bytes()))),
    }
}

impl Aliases {
    /// Parse the text of an aliases file. Never fails: what cannot be used
    /// is listed in `problems`.
    pub fn parse(text: &[u8]) -> Aliases {
        let mut a = Aliases::default();
        // Logical lines: (first line number, text with continuations joined).
        let mut logical: Vec<(usize, String)> = Vec::new();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let Ok(line) = std::str::from_utf8(raw) else {
                a.problems.push(format!("line {n}: not UTF-8 text; skipped"));
                continue;
            };
            if line.trim_start().starts_with('#') {
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                match logical.last_mut() {
                    Some((_, l)) => {
                        l.push(' ');
                        l.push_str(line.trim());
                    }
                    None => a.problems.push(format!("line {n}: continuation line without an alias; skipped")),
                }
                continue;
            }
            logical.push((n, line.trim().to_owned()));
        }
        for (n, line) in logical {
            if let Err(why) = a.add(&line) {
                a.problems.push(format!("line {n}: {why}; skipped"));
            }
        }
        a
    }

    fn add(&mut self, line: &str) -> Result<(), String> {
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err("control character".into());
        }
        let (name, value) = line.split_once(':').ok_or("expected 'name: address, ...'")?;
        let name = name.trim().to_ascii_lowercase();
        let name = name.trim_matches('"');
        if name.is_empty() || name.contains('@') || Mailbox::parse_or_qualify(name.as_bytes(), "localhost").is_err() {
            return Err(format!("{} is not a local name", escape(name.as_bytes())));
        }
        let targets = split_targets(value).iter().map(|t| parse_target(t)).collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(format!("alias {name} has no target"));
        }
        if self.map.contains_key(name) {
            return Err(format!("alias {name} is defined twice (the first is used)"));
        }
        self.map.insert(name.to_owned(), targets);
        Ok(())
    }

    /// How many names the file defines.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Read `path` (missing: no aliases) under the trust rules of the
    /// configuration file. An error means the file exists but may not be
    /// used: the caller defers rather than guess.
    pub fn load(path: &Path) -> Result<Aliases, String> {
        match outq_spool::config::read_trusted(path, &crate::admin::config_trust(), MAX_ALIAS_FILE) {
            Ok(Some(text)) => Ok(Aliases::parse(&text)),
            Ok(None) => Ok(Aliases::default()),
            Err(e) => Err(format!("aliases file not usable: {e}")),
        }
    }
}

/// The local part of `m` when its domain is local, lower-cased.
fn local_name(m: &Mailbox, cfg: &Aliasing) -> Option<String> {
    let s = m.as_str();
    let at = s.rfind('@')?;
    let (local, domain) = (s.get(..at)?, s.get(at + 1..)?);
    cfg.local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain)).then(|| local.to_ascii_lowercase())
}

/// Where one entry recipient goes. Addresses are returned each once, in
/// the order found; never empty.
pub fn expand(rcpt: &Mailbox, aliases: &Aliases, cfg: &Aliasing) -> Expansion {
    let mut out = Expansion { addresses: Vec::new(), notes: Vec::new() };
    if local_name(rcpt, cfg).is_none() {
        out.addresses.push(rcpt.clone());
        return out;
    }
    let mut chain = Vec::new();
    walk(rcpt, aliases, cfg, &mut chain, &mut out);
    let mut seen = HashSet::new();
    out.addresses.retain(|a| seen.insert(a.as_str().to_ascii_lowercase()));
    if out.addresses.len() > MAX_EXPANSION {
        out.notes.push(format!("{rcpt} expands to more than {MAX_EXPANSION} addresses; not expanded"));
        out.addresses = vec![fallback(rcpt, cfg, &mut out.notes)];
    }
    if out.addresses.is_empty() {
        out.addresses.push(fallback(rcpt, cfg, &mut out.notes));
    }
    out
}

/// A local name no alias resolves: `admin_address`, else the name at
/// `myorigin` (for the relay).
fn fallback(rcpt: &Mailbox, cfg: &Aliasing, notes: &mut Vec<String>) -> Mailbox {
    if let Some(admin) = &cfg.admin_address {
        notes.push(format!("{rcpt} has no alias: sent to admin_address {admin}"));
        return admin.clone();
    }
    let s = rcpt.as_str();
    let local = s.rsplit_once('@').map_or(s, |(l, _)| l);
    Mailbox::parse(format!("{local}@{}", cfg.myorigin).as_bytes()).unwrap_or_else(|_| rcpt.clone())
}

fn walk(addr: &Mailbox, aliases: &Aliases, cfg: &Aliasing, chain: &mut Vec<String>, out: &mut Expansion) {
    let Some(name) = local_name(addr, cfg) else {
        out.addresses.push(addr.clone());
        return;
    };
    if chain.contains(&name) || chain.len() >= MAX_DEPTH {
        out.notes.push(format!("alias loop through {}; {addr} is treated as having no alias", chain.join(" -> ")));
        out.addresses.push(fallback(addr, cfg, &mut out.notes));
        return;
    }
    let Some(targets) = aliases.map.get(&name) else {
        out.addresses.push(fallback(addr, cfg, &mut out.notes));
        return;
    };
    chain.push(name.clone());
    let before = out.addresses.len();
    let domain = addr.as_str().rsplit('@').next().unwrap_or("localhost").to_owned();
    for t in targets {
        if out.addresses.len() > MAX_EXPANSION {
            break;
        }
        match t {
            Target::Address(m) => walk(m, aliases, cfg, chain, out),
            Target::Name { name: n, stop } => {
                let Ok(m) = Mailbox::parse(format!("{n}@{domain}").as_bytes()) else { continue };
                if *stop || *n == name {
                    out.addresses.push(fallback(&m, cfg, &mut out.notes));
                } else {
                    walk(&m, aliases, cfg, chain, out);
                }
            }
            Target::Unsupported(what) => out.notes.push(format!(
                "alias {name}: target {} is not supported by a null client (no local delivery); ignored",
                escape(what.as_bytes())
            )),
        }
    }
    chain.pop();
    if out.addresses.len() == before {
        out.addresses.push(fallback(addr, cfg, &mut out.notes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Mailbox {
        Mailbox::parse(s.as_bytes()).unwrap()
    }

    fn cfg(admin: Option<&str>) -> Aliasing {
        Aliasing {
            alias_file: "/etc/aliases".into(),
            admin_address: admin.map(m),
            local_domains: vec!["host.example".into(), "example.org".into(), "localhost".into()],
            myorigin: "example.org".into(),
        }
    }

    fn exp(text: &str, rcpt: &str, admin: Option<&str>) -> Vec<String> {
        let a = Aliases::parse(text.as_bytes());
        expand(&m(rcpt), &a, &cfg(admin)).addresses.iter().map(|a| a.as_str().to_owned()).collect()
    }

    const FILE: &str = "# Debian's default, and more\n\
mailer-daemon: postmaster\npostmaster: root\nnobody: root\n\
root: admin@mail.example.net, \"ops team\"@mail.example.net\n\
www-data: root,\n\twebmaster@mail.example.net\n\
Loop1: loop2\nloop2: loop1@localhost\n\
selfish: \\selfish, other@mail.example.net\n\
pipe: \"|/usr/bin/procmail\"\nfile: /var/mail/x, kept@mail.example.net\n";

    #[test]
    fn chains_and_lists() {
        let admin = ["admin@mail.example.net", "\"ops team\"@mail.example.net"];
        assert_eq!(exp(FILE, "root@host.example", None), admin);
        assert_eq!(exp(FILE, "MAILER-DAEMON@localhost", None), admin);
        assert_eq!(exp(FILE, "www-data@example.org", None), [admin[0], admin[1], "webmaster@mail.example.net"]);
    }

    #[test]
    fn remote_addresses_are_untouched() {
        assert_eq!(exp(FILE, "root@elsewhere.example", Some("a@b.example")), ["root@elsewhere.example"]);
    }

    #[test]
    fn unknown_names_go_to_the_admin_address_or_stay() {
        assert_eq!(exp(FILE, "alice@host.example", Some("boss@mail.example.net")), ["boss@mail.example.net"]);
        assert_eq!(exp(FILE, "alice@host.example", None), ["alice@example.org"]);
        assert_eq!(exp(FILE, "alice@localhost", None), ["alice@example.org"]);
        assert_eq!(exp("", "root@host.example", Some("boss@mail.example.net")), ["boss@mail.example.net"]);
    }

    #[test]
    fn loops_self_references_and_unsupported_targets_never_lose_the_recipient() {
        assert_eq!(exp(FILE, "loop1@host.example", None), ["loop1@example.org"]);
        assert_eq!(exp(FILE, "loop1@host.example", Some("boss@x.example")), ["boss@x.example"]);
        assert_eq!(exp(FILE, "selfish@host.example", None), ["selfish@example.org", "other@mail.example.net"]);
        assert_eq!(exp(FILE, "pipe@host.example", Some("boss@x.example")), ["boss@x.example"]);
        assert_eq!(exp(FILE, "file@host.example", None), ["kept@mail.example.net"]);
        let a = Aliases::parse(FILE.as_bytes());
        let e = expand(&m("pipe@host.example"), &a, &cfg(None));
        assert_eq!(e.addresses, [m("pipe@example.org")]);
        assert!(e.notes.iter().any(|n| n.contains("not supported")), "{:?}", e.notes);
        let e = expand(&m("loop2@host.example"), &a, &cfg(None));
        assert!(e.notes.iter().any(|n| n.contains("alias loop")), "{:?}", e.notes);
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        let a = Aliases::parse(
            b" leading: x@y.example\nno colon here\nbad name: x@y.example\nok: a@b.example\n\
empty:\nbad: <unbalanced@x\nok: twice@b.example\n\xff: x\n",
        );
        assert_eq!(a.len(), 1);
        let lines: Vec<&str> = a.problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(lines, ["line 1", "line 8", "line 2", "line 3", "line 5", "line 6", "line 7"], "{:?}", a.problems);
    }

    #[test]
    fn crlf_and_case() {
        let a = Aliases::parse(b"ROOT: Admin@Example.NET\r\n");
        assert_eq!(expand(&m("root@HOST.example"), &a, &cfg(None)).addresses, [m("Admin@Example.NET")]);
    }

    #[test]
    fn a_huge_expansion_is_refused_whole() {
        let mut text = String::from("big: ");
        for i in 0..(MAX_EXPANSION + 5) {
            text.push_str(&format!("u{i}@x.example, "));
        }
        text.push('\n');
        assert_eq!(exp(&text, "big@host.example", None), ["big@example.org"]);
    }
}
