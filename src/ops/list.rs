/*!
`outq list [--state S] [--json]`: the queue, one entry per line, like
`mailq`. Columns: ID, state, age, size, sender, recipients as
pending/delivered/failed, next attempt, last error.
*/
#![forbid(unsafe_code)]

use std::io::Write;

use serde::Serialize;

use super::inventory::{self, EntryView, VISIBLE};
use crate::duration;
use crate::error::Error;
use crate::queue::store::{Queue, now};

#[derive(Debug, Serialize)]
struct Document<'a> {
    entries: &'a [EntryView],
}

fn cell_next(v: &EntryView, t: u64) -> String {
    match v.next_attempt {
        Some(n) if n > t => format!("in {}", duration::age(n - t)),
        Some(_) => "now".into(),
        None => "-".into(),
    }
}

/// What the last column says when nothing was recorded: never empty, so
/// that no entry sits in the queue without a word about why.
fn no_reason(state: &str) -> &'static str {
    match state {
        "new" => "waiting for pickup",
        "active" => "being delivered",
        "deferred" => "waiting for its next attempt",
        "hold" => "held (no reason recorded)",
        "failed" => "failed (see 'outq show')",
        _ => "quarantined (reason in the log)",
    }
}

/// One line per entry.
pub fn render(entries: &[EntryView], t: u64) -> String {
    let mut out = String::new();
    for v in entries {
        let sender =
            if v.sender.is_empty() && v.problem.is_none() { "<>".to_owned() } else { format!("<{}>", v.sender) };
        let last = v
            .problem
            .clone()
            .or_else(|| v.last_error.clone())
            .or_else(|| v.hold_reason.clone())
            .unwrap_or_else(|| no_reason(v.state).to_owned());
        out.push_str(&format!(
            "{:<26} {:<8} {:>4} {:>9} {} {}/{}/{} {} {}\n",
            v.id,
            v.state,
            duration::age(t.saturating_sub(v.arrival)),
            v.size,
            sender,
            v.count("pending"),
            v.count("delivered"),
            v.count("failed"),
            cell_next(v, t),
            last
        ));
    }
    out
}

pub fn run(o: &super::Opened, state: Option<Queue>, json: bool) -> Result<(), Error> {
    let queues: Vec<Queue> = match state {
        Some(q) => vec![q],
        None => VISIBLE.to_vec(),
    };
    let limits = outq_spool::entry::Limits { max_recipients: o.cfg.max_recipients, max_size: o.cfg.message_size_limit };
    let entries = inventory::all(&o.store, &queues, &limits);
    let text = if json {
        let mut s = serde_json::to_string_pretty(&Document { entries: &entries })
            .map_err(|e| Error::new(format!("cannot encode JSON: {e}"), "report this as a bug"))?;
        s.push('\n');
        s
    } else if entries.is_empty() {
        "queue is empty\n".to_owned()
    } else {
        render(&entries, now())
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}
