//! When `tally serve` settles on its own.
//!
//! Two forms: `daily@HH:MM` (UTC wall clock) and `every <n>m` / `every <n>h`.
//! [`Schedule::next_after_ms`] is pure (it takes the current time), so it is
//! tested without waiting; the server sleeps until the next instant and
//! runs the same settlement a finance user would trigger.

/// Shortest interval allowed: settling more often than this is a
/// misconfiguration, not a policy.
pub const INTERVAL_MIN_S: u64 = 60;
/// Longest interval allowed (a week).
pub const INTERVAL_MAX_S: u64 = 7 * 24 * 3600;
/// One day, in milliseconds.
pub const DAY_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every day at this many seconds after 00:00 UTC.
    DailyAt { second_of_day: u32 },
    /// Every this many seconds, aligned to the Unix epoch.
    Every { interval_s: u64 },
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let bad = || format!("schedule {text:?} must be daily@HH:MM (UTC) or every <n>m / every <n>h");
        if let Some(time) = text.strip_prefix("daily@") {
            let (h, m) = time.split_once(':').ok_or_else(bad)?;
            let h: u32 = h.parse().map_err(|_| bad())?;
            let m: u32 = m.parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            return Ok(Schedule::DailyAt { second_of_day: h * 3600 + m * 60 });
        }
        if let Some(every) = text.strip_prefix("every ") {
            let every = every.trim();
            let (n, unit) = every.split_at(every.len().saturating_sub(1));
            let n: u64 = n.trim().parse().map_err(|_| bad())?;
            let interval_s = match unit {
                "m" => n.checked_mul(60),
                "h" => n.checked_mul(3600),
                _ => None,
            }
            .ok_or_else(bad)?;
            if !(INTERVAL_MIN_S..=INTERVAL_MAX_S).contains(&interval_s) {
                return Err(format!("schedule interval must be between 1m and 168h, got {text:?}"));
            }
            return Ok(Schedule::Every { interval_s });
        }
        Err(bad())
    }

    /// The first firing strictly after `now_ms`.
    pub fn next_after_ms(&self, now_ms: u64) -> u64 {
        match *self {
            Schedule::DailyAt { second_of_day } => {
                let today = now_ms - now_ms % DAY_MS;
                let at = today + u64::from(second_of_day) * 1000;
                if at > now_ms { at } else { at + DAY_MS }
            }
            Schedule::Every { interval_s } => {
                let interval_ms = interval_s * 1000;
                (now_ms / interval_ms + 1) * interval_ms
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes_next() {
        let daily = Schedule::parse("daily@23:30").unwrap();
        let day0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS;
        assert_eq!(daily.next_after_ms(day0), day0 + (23 * 3600 + 1800) * 1000);
        assert_eq!(daily.next_after_ms(day0 + (23 * 3600 + 1800) * 1000), day0 + DAY_MS + (23 * 3600 + 1800) * 1000);
        let every = Schedule::parse("every 15m").unwrap();
        assert_eq!(every, Schedule::Every { interval_s: 900 });
        assert_eq!(every.next_after_ms(900_000), 1_800_000);
        assert_eq!(every.next_after_ms(899_999), 900_000);
        assert_eq!(Schedule::parse("every 2h").unwrap(), Schedule::Every { interval_s: 7200 });
        for bad in ["daily@24:00", "daily@7", "every 0m", "every 30s", "hourly", "every 200h"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
