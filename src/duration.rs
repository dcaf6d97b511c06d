/*!
Durations as operators write them: `30s`, `10m`, `4h`, `7d`.
*/
#![forbid(unsafe_code)]

use std::time::Duration;

/// Parse `N` followed by one unit letter `s`, `m`, `h` or `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{t:?} is not a duration like 30s, 10m, 4h or 7d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("{t:?} is not a duration like 30s, 10m, 4h or 7d")),
    };
    secs.map(Duration::from_secs).ok_or_else(|| format!("{t:?} is too long"))
}

/// Write a duration back in the largest exact unit.
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Human form of an age for listings: `45s`, `12m`, `3h`, `2d`.
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("4h").unwrap(), Duration::from_secs(14_400));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "30", "s", "-1s", "1.5h", "3w", "10 m", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_back() {
        for t in ["30s", "10m", "4h", "7d", "90s"] {
            assert_eq!(format(parse(t).unwrap()), t);
        }
    }
}
