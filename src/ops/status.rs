/*!
`outq status [--json] [--warn-age DUR] [--crit-age DUR]`: counts, bytes and
oldest age per state, and whether a runner holds the queue lock.

With a threshold it prints one line in the monitoring-plugin convention
(`OUTQ OK|WARNING|CRITICAL - summary | perfdata`) and exits 0, 1 or 2, so a
queue that silently fills is caught: the age is that of the oldest entry
still waiting (new, active, deferred, hold), and a spool with no runner
holding the lock is at least WARNING.
*/
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::inventory::VISIBLE;
use crate::duration;
use crate::error::Error;
use crate::queue::store::{Queue, now};
use crate::runner::lock;

#[derive(Debug, Serialize)]
struct StateStats {
    state: &'static str,
    count: u64,
    bytes: u64,
    oldest_age: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    spool: String,
    runner_running: bool,
    runner_pid: Option<u32>,
    states: Vec<StateStats>,
}

fn stats(store: &crate::queue::store::Store, q: Queue, t: u64) -> StateStats {
    let mut s = StateStats { state: q.name(), count: 0, bytes: 0, oldest_age: None };
    for name in store.list(q).unwrap_or_default() {
        let Ok(st) = store.stat(q, &name) else { continue };
        s.count += 1;
        s.bytes += u64::try_from(st.st_size).unwrap_or(0);
        let arrival = outq_spool::queue_id::QueueId::parse(&name)
            .map(|i| i.arrival_secs())
            .unwrap_or(u64::try_from(st.st_mtime).unwrap_or(0));
        let age = t.saturating_sub(arrival);
        s.oldest_age = Some(s.oldest_age.map_or(age, |a: u64| a.max(age)));
    }
    s
}

pub fn run(o: &super::Opened, json: bool, warn: Option<Duration>, crit: Option<Duration>) -> Result<ExitCode, Error> {
    let t = now();
    let holder = lock::probe(&o.store);
    let report = Report {
        spool: o.store.root.display().to_string(),
        runner_running: holder.is_some(),
        runner_pid: holder.flatten(),
        states: VISIBLE.iter().map(|&q| stats(&o.store, q, t)).collect(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        let s = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::new(format!("cannot encode JSON: {e}"), "report this as a bug"))?;
        let _ = writeln!(out, "{s}");
    }
    let waiting = |s: &&StateStats| matches!(s.state, "new" | "active" | "deferred" | "hold");
    let oldest = report.states.iter().filter(waiting).filter_map(|s| s.oldest_age).max().unwrap_or(0);
    let queued: u64 = report.states.iter().filter(waiting).map(|s| s.count).sum();
    if warn.is_none() && crit.is_none() {
        if !json {
            let runner = match (report.runner_running, report.runner_pid) {
                (true, Some(p)) => format!("running (pid {p})"),
                (true, None) => "running".into(),
                (false, _) => "not running".into(),
            };
            let _ = writeln!(out, "spool {}: runner {runner}", report.spool);
            for s in &report.states {
                let age = s.oldest_age.map(duration::age).unwrap_or_else(|| "-".into());
                let _ = writeln!(out, "{:<9} {:>7} entries {:>12} bytes  oldest {age}", s.state, s.count, s.bytes);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let over = |d: Option<Duration>| d.is_some_and(|d| oldest > d.as_secs());
    let (word, code) = if over(crit) {
        ("CRITICAL", 2)
    } else if over(warn) || !report.runner_running {
        ("WARNING", 1)
    } else {
        ("OK", 0)
    };
    let perf: Vec<String> = report.states.iter().map(|s| format!("{}={}", s.state, s.count)).collect();
    let runner = if report.runner_running { "runner running" } else { "no runner holds the queue lock" };
    if !json {
        let _ = writeln!(
            out,
            "OUTQ {word} - {queued} queued, oldest {}, {runner} | {} oldest={oldest}s",
            duration::age(oldest),
            perf.join(" ")
        );
    }
    Ok(ExitCode::from(code))
}
