/*!
`mailq` and `sendmail -bp`: the queue in the format of sendmail's mailq,
from the same inventory as `outq list`.

```text
/var/spool/outq (1 request)
-----Queue ID------------- --Size-- ----Arrival Time---- -Sender/Recipient-------
01JE3XAMPLE0000000000000A*      412 Fri, 04 Dec 2026 04:27  <root@host.example>
    (deferred: 451 4.3.0 try again later)
                                                            <admin@example.org>
Total requests: 1
```

The marker after the ID is Postfix's: `*` being delivered, `!` held; a
failed or corrupt entry says so in the parenthesised line, which otherwise
holds the last error. One line per recipient not yet delivered.

The spool is readable only by the queue owner, so only the queue owner and
root see the queue (root becomes the owner first, as for `outq list`);
anyone else gets one line saying so and exit 77, never a partial list.
*/
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::ops::inventory::{self, EntryView, VISIBLE};

fn marker(v: &EntryView) -> &'static str {
    match v.state {
        "active" => "*",
        "hold" => "!",
        _ => "",
    }
}

fn note(v: &EntryView) -> Option<String> {
    let why = v.problem.clone().or_else(|| v.last_error.clone()).or_else(|| v.hold_reason.clone());
    match (v.state, why) {
        ("deferred" | "active", None) => None,
        ("new", None) => None,
        (state, None) => Some(state.to_owned()),
        (state, Some(w)) => Some(format!("{state}: {w}")),
    }
}

/// The listing for `entries`.
pub fn render(spool: &str, entries: &[EntryView]) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".to_owned();
    }
    let n = entries.len();
    let mut out = format!("{spool} ({n} request{})\n", if n == 1 { "" } else { "s" });
    out.push_str("-----Queue ID------------- --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    for v in entries {
        let when: String = crate::date::rfc5322(v.arrival).chars().take(22).collect();
        let id = format!("{}{}", v.id, marker(v));
        let sender = if v.sender.is_empty() { "<>".to_owned() } else { format!("<{}>", v.sender) };
        let _ = writeln!(out, "{id:<27}{:>8} {when:<22} {sender}", v.size);
        if let Some(n) = note(v) {
            let _ = writeln!(out, "    ({n})");
        }
        for r in v.recipients.iter().filter(|r| r.status != "delivered") {
            let _ = writeln!(out, "{:60}<{}>", "", r.address);
        }
    }
    let _ = writeln!(out, "Total requests: {n}");
    out
}

/// Run `mailq`; the exit status.
pub fn run(config: Option<PathBuf>) -> ExitCode {
    let opened = match crate::ops::open(&crate::ops::Where { spool: None, config }) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "mailq: {e}");
            return ExitCode::from(e.code);
        }
    };
    let limits = outq_spool::entry::Limits {
        max_recipients: opened.cfg.max_recipients,
        max_size: opened.cfg.message_size_limit,
    };
    let entries = inventory::all(&opened.store, &VISIBLE, &limits);
    let spool = opened.cfg.spool_directory.display().to_string();
    let _ = std::io::stdout().lock().write_all(render(&spool, &entries).as_bytes());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::inventory::RcptView;

    fn entry(id: &str, state: &'static str, rcpts: &[(&str, &'static str)]) -> EntryView {
        EntryView {
            id: id.into(),
            state,
            arrival: 1_796_358_434,
            size: 412,
            sender: "root@host.example".into(),
            recipients: rcpts
                .iter()
                .map(|(a, s)| RcptView { address: (*a).into(), status: s, reply: String::new() })
                .collect(),
            next_attempt: None,
            last_error: (state == "deferred").then(|| "451 4.3.0 try again later".into()),
            hold_reason: None,
            problem: None,
        }
    }

    #[test]
    fn sendmail_format_with_recipient_lines() {
        let e = [
            entry("AAAA", "deferred", &[("a@example.org", "pending"), ("b@example.org", "delivered")]),
            entry("BBBB", "active", &[("c@example.org", "pending")]),
        ];
        let text = render("/var/spool/outq", &e);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "/var/spool/outq (2 requests)");
        assert!(lines[2].starts_with("AAAA ") && lines[2].ends_with(" <root@host.example>"), "{text}");
        assert!(lines[2].contains("     412 "));
        assert_eq!(lines[3], "    (deferred: 451 4.3.0 try again later)");
        assert_eq!(lines[4].trim_start(), "<a@example.org>");
        assert!(lines[5].starts_with("BBBB*"));
        assert_eq!(lines.last(), Some(&"Total requests: 2"));
        assert!(!text.contains("b@example.org"));
        assert_eq!(render("/x", &[]), "Mail queue is empty\n");
    }
}
