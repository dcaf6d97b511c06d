/*!
Queue IDs: the names of entries in the spool.

An ID is 26 upper-case hexadecimal digits: 9 for the arrival time in seconds
since the epoch, 5 for the microseconds, 12 for 48 random bits from the
kernel. IDs sort by arrival time, carry no user-supplied byte, are the same
on every filesystem (unlike inode numbers). A collision in `tmp/` is caught by
`O_EXCL` and retried with new random bits; one in `new/` is caught by
`RENAME_NOREPLACE` and refused (exit 75, the caller retries).
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::process;

/// Length of a queue ID in characters.
pub const LEN: usize = 26;

/// A syntactically valid queue ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A new ID for a message arriving at `now`.
    pub fn generate(now: SystemTime) -> io::Result<QueueId> {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let mut rnd = [0u8; 6];
        process::random_bytes(&mut rnd)?;
        let r = rnd.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        // Seconds are capped at 9 hex digits (year 4147) to keep the length fixed.
        let secs = since.as_secs().min(0xF_FFFF_FFFF);
        Ok(QueueId(format!("{:09X}{:05X}{:012X}", secs, since.subsec_micros(), r)))
    }

    /// Accept exactly 26 upper-case hexadecimal digits, nothing else.
    pub fn parse(s: &str) -> Option<QueueId> {
        QueueId::is_valid(s.as_bytes()).then(|| QueueId(s.to_owned()))
    }

    /// Whether `b` is a queue ID: [`LEN`] upper-case hexadecimal digits.
    pub fn is_valid(b: &[u8]) -> bool {
        b.len() == LEN && b.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The arrival time encoded in the ID, in seconds since the epoch.
    pub fn arrival_secs(&self) -> u64 {
        self.0.get(..9).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_encode_time() {
        let t = UNIX_EPOCH + Duration::new(1_764_345_835, 123_456_000);
        let id = QueueId::generate(t).unwrap();
        assert_eq!(id.as_str().len(), LEN);
        assert_eq!(QueueId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.arrival_secs(), 1_764_345_835);
        assert!(id.as_str().starts_with("06929C7EB1E240"));
    }

    #[test]
    fn ids_differ_and_sort_by_time() {
        let t = SystemTime::now();
        let a = QueueId::generate(t).unwrap();
        let b = QueueId::generate(t).unwrap();
        assert_ne!(a, b);
        let later = QueueId::generate(t + Duration::from_secs(1)).unwrap();
        assert!(later > a && later > b);
    }

    #[test]
    fn parse_is_strict() {
        for bad in [
            "",
            "06929C7EB1E240ABCDEF01234",
            "06929F0EB1E240ABCDEF0123456",
            "06929f0eb1e240abcdef012345",
            "../../../../etc/passwd00000",
            "06929C7EB1E240ABCDEF01234G",
            "06929F0EB1E240ABCDEF01234/",
        ] {
            assert_eq!(QueueId::parse(bad), None, "{bad:?}");
        }
        assert!(QueueId::parse("06929C7EB1E240ABCDEF012345").is_some());
    }
}
