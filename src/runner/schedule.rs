/*!
When to try again.

The wait before the next attempt grows with the message's age, clamped
between `minimal_backoff_time` and `maximal_backoff_time` (Postfix's rule):
a fresh message is retried after 5 minutes, an old one about every hour.
After `maximal_queue_lifetime` the remaining recipients fail.
*/
#![forbid(unsafe_code)]

use crate::config::RunnerConfig;

/// Seconds to wait before the next attempt of a message `age` seconds old.
pub fn backoff(rc: &RunnerConfig, age: u64) -> u64 {
    age.clamp(rc.minimal_backoff_time.as_secs(), rc.maximal_backoff_time.as_secs())
}

/// Whether a message that arrived at `arrival` has outlived the queue.
pub fn expired(rc: &RunnerConfig, arrival: u64, now: u64) -> bool {
    now.saturating_sub(arrival) > rc.maximal_queue_lifetime.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_clamped_age() {
        let rc = RunnerConfig::default();
        assert_eq!(backoff(&rc, 0), 300);
        assert_eq!(backoff(&rc, 1000), 1000);
        assert_eq!(backoff(&rc, 1_000_000), 4000);
    }

    #[test]
    fn lifetime() {
        let rc = RunnerConfig::default();
        assert!(!expired(&rc, 100, 100 + 5 * 86_400));
        assert!(expired(&rc, 100, 101 + 5 * 86_400));
    }
}
