/*!
The runner's memory of relays that do not answer: a circuit breaker per
relay (`host:port`), shared by every delivery thread of the process.

Without it, a relay that accepts connections and then says nothing costs
each queued entry a full `command_timeout` (or `connect_timeout`): 2,000
entries behind a silent relay would keep a pass busy for hours. So after
`relay_failure_limit` consecutive failures to set up a session with one
relay (connection refused or timed out, no greeting, TLS or AUTH failure,
a connection lost in the middle of a transaction), the relay is *open*:
for the next `queue_run_interval` it is not tried at all, and the entries
that would have gone to it are deferred at once with the last reason. The
first failure that opens it is logged once; the next session set up after
that period is a trial, and one success closes the breaker again.

The state lives in memory only: a runner that restarts tries every relay
again, which is what an operator who just fixed one expects.
*/
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One relay's recent history.
#[derive(Debug, Default, Clone)]
struct Health {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    last_reason: String,
}

fn registry() -> &'static Mutex<HashMap<String, Health>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Health>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

fn with<R>(f: impl FnOnce(&mut HashMap<String, Health>) -> R) -> R {
    // A poisoned lock only means a thread panicked while holding it; the
    // map itself is always consistent (every update is one assignment).
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    f(&mut map)
}

/// The breaker settings of one transport.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    /// Consecutive failures that open the breaker; 0 disables it.
    pub limit: u32,
    /// How long an open breaker skips its relay.
    pub open_for: Duration,
}

impl Breaker {
    /// `Some(reason)` when `relay` is open now: skip it.
    pub fn skip(&self, relay: &str) -> Option<String> {
        if self.limit == 0 {
            return None;
        }
        let now = Instant::now();
        with(|m| {
            let h = m.get(relay)?;
            let until = h.open_until?;
            (now < until).then(|| {
                format!(
                    "{relay} not tried: {} consecutive failures, skipped for {}s (last: {})",
                    h.consecutive_failures,
                    until.saturating_duration_since(now).as_secs(),
                    h.last_reason
                )
            })
        })
    }

    /// A session with `relay` was set up, or a transaction on it finished.
    pub fn success(&self, relay: &str) {
        if self.limit == 0 {
            return;
        }
        let was_open = with(|m| m.remove(relay).is_some_and(|h| h.open_until.is_some()));
        if was_open {
            crate::logging::info(&format!("relay {relay} answers again"));
        }
    }

    /// A session with `relay` could not be set up, or broke. Returns true
    /// when this failure opened the breaker (the caller logs it once).
    pub fn failure(&self, relay: &str, reason: &str) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = Instant::now();
        let opened = with(|m| {
            let h = m.entry(relay.to_owned()).or_default();
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            h.last_reason = reason.to_owned();
            let was_open = h.open_until.is_some_and(|u| now < u);
            if h.consecutive_failures >= self.limit && !was_open {
                h.open_until = Some(now + self.open_for);
                true
            } else {
                false
            }
        });
        if opened {
            crate::logging::warning(&outq_spool::log::escape(
                format!(
                    "relay {relay}: {} consecutive failures (last: {reason}); \
                     deferring its entries without trying it for {}s",
                    self.limit,
                    self.open_for.as_secs()
                )
                .as_bytes(),
            ));
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_limit_and_closes_on_success() {
        let b = Breaker { limit: 3, open_for: Duration::from_secs(60) };
        let relay = "breaker-test-1:25";
        assert!(!b.failure(relay, "timeout"));
        assert!(!b.failure(relay, "timeout"));
        assert!(b.skip(relay).is_none(), "two failures do not open it");
        assert!(b.failure(relay, "timeout"), "the third opens it");
        let why = b.skip(relay).unwrap_or_default();
        assert!(why.contains("3 consecutive failures") && why.contains("timeout"), "{why}");
        assert!(!b.failure(relay, "again"), "an open breaker is not opened twice");
        b.success(relay);
        assert!(b.skip(relay).is_none());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker { limit: 2, open_for: Duration::from_secs(60) };
        let relay = "breaker-test-2:25";
        assert!(!b.failure(relay, "x"));
        b.success(relay);
        assert!(!b.failure(relay, "x"));
        assert!(b.skip(relay).is_none());
    }

    #[test]
    fn expires_and_limit_zero_disables() {
        let b = Breaker { limit: 1, open_for: Duration::ZERO };
        let relay = "breaker-test-3:25";
        assert!(b.failure(relay, "x"));
        assert!(b.skip(relay).is_none(), "open for zero seconds: the next try is a trial");
        let off = Breaker { limit: 0, open_for: Duration::from_secs(60) };
        assert!(!off.failure("breaker-test-4:25", "x"));
        assert!(off.skip("breaker-test-4:25").is_none());
    }
}
