/*!
`outq status [--json] [--monitor] [--warn-age DUR] [--crit-age DUR]
[--warn-failed N] [--crit-failed N] [--warn-corrupt N] [--crit-corrupt N]`:
counts, bytes and oldest age per state, and whether a runner holds the
queue lock.

With `--monitor` or any threshold it prints one line in the
monitoring-plugin convention (`OUTQ OK|WARNING|CRITICAL - summary |
perfdata`) and exits 0, 1 or 2 (3, UNKNOWN, when the spool cannot be read
at all), so a queue that silently fills, or mail that silently fails, is
caught:
- the age is that of the oldest entry still waiting (new, active,
  deferred, hold);
- an entry in `failed/` (its recipients refused, its notice maybe
  undeliverable too) or in `corrupt/` (quarantined) raises at least
  WARNING by default: one is enough (`--warn-failed 1 --warn-corrupt 1`),
  until an operator deletes or requeues it;
- a spool with no runner holding the lock is at least WARNING.
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

/// The monitoring thresholds; `None` from [`Thresholds::from_args`] means
/// a plain report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    pub warn_age: Option<Duration>,
    pub crit_age: Option<Duration>,
    pub warn_failed: Option<u64>,
    pub crit_failed: Option<u64>,
    pub warn_corrupt: Option<u64>,
    pub crit_corrupt: Option<u64>,
}

impl Thresholds {
    /// Monitoring is on with `monitor` or any threshold; a failed or
    /// corrupt entry then warns unless a count says otherwise.
    pub fn from_args(
        monitor: bool,
        warn_age: Option<Duration>,
        crit_age: Option<Duration>,
        (warn_failed, crit_failed): (Option<u64>, Option<u64>),
        (warn_corrupt, crit_corrupt): (Option<u64>, Option<u64>),
    ) -> Option<Thresholds> {
        let any = [warn_failed, crit_failed, warn_corrupt, crit_corrupt].iter().any(Option::is_some);
        if !(monitor || any || warn_age.is_some() || crit_age.is_some()) {
            return None;
        }
        Some(Thresholds {
            warn_age,
            crit_age,
            warn_failed: warn_failed.or(Some(1)),
            crit_failed,
            warn_corrupt: warn_corrupt.or(Some(1)),
            crit_corrupt,
        })
    }

    /// The verdict (word, exit code) and what caused it.
    fn judge(&self, oldest: u64, failed: u64, corrupt: u64, runner: bool) -> (&'static str, u8, Vec<String>) {
        let age_over = |d: Option<Duration>| d.is_some_and(|d| oldest > d.as_secs());
        let count_over = |n: u64, limit: Option<u64>| limit.is_some_and(|l| l > 0 && n >= l);
        let mut why = Vec::new();
        let crit = [
            (age_over(self.crit_age), format!("oldest waiting entry older than {}", shown(self.crit_age))),
            (count_over(failed, self.crit_failed), format!("{failed} failed")),
            (count_over(corrupt, self.crit_corrupt), format!("{corrupt} corrupt")),
        ];
        let warn = [
            (age_over(self.warn_age), format!("oldest waiting entry older than {}", shown(self.warn_age))),
            (count_over(failed, self.warn_failed), format!("{failed} failed")),
            (count_over(corrupt, self.warn_corrupt), format!("{corrupt} corrupt")),
            (!runner, "no runner holds the queue lock".to_owned()),
        ];
        for (hit, text) in crit {
            if hit {
                why.push(text);
            }
        }
        if !why.is_empty() {
            return ("CRITICAL", 2, why);
        }
        for (hit, text) in warn {
            if hit {
                why.push(text);
            }
        }
        if why.is_empty() { ("OK", 0, why) } else { ("WARNING", 1, why) }
    }
}

fn shown(d: Option<Duration>) -> String {
    d.map(|d| duration::age(d.as_secs())).unwrap_or_default()
}

pub fn run(o: &super::Opened, json: bool, limits: Option<&Thresholds>) -> Result<ExitCode, Error> {
    let t = now();
    let holder = lock::probe(&o.store);
    let report = Report {
        spool: o.store.root.display().to_string(),
        runner_running: holder.is_some(),
        runner_pid: holder.flatten(),
        // tmp/ first: files being written, or left by helpers that died
        // (reclaimed at the next queue run).
        states: std::iter::once(Queue::Tmp).chain(VISIBLE).map(|q| stats(&o.store, q, t)).collect(),
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
    let count = |name: &str| report.states.iter().find(|s| s.state == name).map_or(0, |s| s.count);
    let Some(limits) = limits else {
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
    };
    let (failed, corrupt) = (count("failed"), count("corrupt"));
    let (word, code, why) = limits.judge(oldest, failed, corrupt, report.runner_running);
    let perf: Vec<String> = report.states.iter().map(|s| format!("{}={}", s.state, s.count)).collect();
    let runner = if report.runner_running { "runner running" } else { "no runner holds the queue lock" };
    let cause = if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) };
    if !json {
        let _ = writeln!(
            out,
            "OUTQ {word} - {queued} queued, oldest {}, {failed} failed, {corrupt} corrupt, {runner}{cause} | {} oldest={oldest}s",
            duration::age(oldest),
            perf.join(" ")
        );
    }
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Thresholds {
        Thresholds::from_args(true, None, None, (None, None), (None, None)).unwrap_or_default()
    }

    #[test]
    fn plain_without_thresholds() {
        assert!(Thresholds::from_args(false, None, None, (None, None), (None, None)).is_none());
        assert!(Thresholds::from_args(false, None, None, (Some(3), None), (None, None)).is_some());
    }

    #[test]
    fn one_failed_or_corrupt_entry_warns_by_default() {
        assert_eq!(limits().judge(0, 0, 0, true).1, 0);
        let (word, code, why) = limits().judge(0, 1, 0, true);
        assert_eq!((word, code), ("WARNING", 1));
        assert_eq!(why, vec!["1 failed".to_owned()]);
        assert_eq!(limits().judge(0, 0, 2, true).1, 1);
        assert_eq!(limits().judge(0, 0, 0, false).1, 1, "no runner");
    }

    #[test]
    fn counts_and_ages_can_be_critical() {
        let t = Thresholds::from_args(false, None, Some(Duration::from_secs(60)), (Some(5), Some(10)), (None, Some(1)))
            .unwrap_or_default();
        assert_eq!(t.judge(0, 4, 0, true).1, 0, "below the failed warning");
        assert_eq!(t.judge(0, 5, 0, true).1, 1);
        assert_eq!(t.judge(0, 10, 0, true).1, 2);
        assert_eq!(t.judge(0, 0, 1, true).1, 2, "one corrupt is critical here");
        assert_eq!(t.judge(61, 0, 0, true).1, 2, "age");
        let off = Thresholds::from_args(false, None, None, (Some(0), None), (Some(0), None)).unwrap_or_default();
        assert_eq!(off.judge(0, 7, 7, true).1, 0, "0 disables a count threshold");
    }
}
