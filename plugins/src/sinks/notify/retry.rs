//! When to try a failed delivery again: exponential backoff with full
//! jitter, a receiver's `Retry-After`, and which failures are worth another
//! attempt at all.

use std::time::{Duration, SystemTime};

use rand::Rng as _;

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Worth another attempt (connection error, timeout, 5xx, 408, 429,
    /// SMTP 4xx); `after` is the receiver's `Retry-After`, if it sent one.
    Retry {
        /// What happened, fit to log (no secrets).
        reason: String,
        /// The receiver asked to wait this long.
        after: Option<Duration>,
    },
    /// The receiver refused the notice (another 4xx, SMTP 5xx): another
    /// attempt would fail the same way.
    Refused {
        /// What happened: the status and an excerpt of the answer.
        reason: String,
    },
}

impl DeliveryError {
    /// What happened.
    pub fn reason(&self) -> &str {
        match self {
            DeliveryError::Retry { reason, .. } | DeliveryError::Refused { reason } => reason,
        }
    }
}

/// The backoff settings of one sink.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first retry waits up to this long.
    pub initial: Duration,
    /// No wait is longer (a `Retry-After` included).
    pub max: Duration,
}

impl Backoff {
    /// How long to wait before attempt `attempts + 1`, after `attempts`
    /// failed ones: uniformly random up to `initial · 2^(attempts-1)`,
    /// capped at `max` ("full jitter"), unless the receiver said how long
    /// (`retry_after`, at least `initial` and at most `max`).
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        // `Retry-After: 0` (or a date past) would retry in a tight loop:
        // never sooner than `initial`.
        if let Some(after) = retry_after {
            return after.max(self.initial).min(self.max);
        }
        let exponent = attempts.saturating_sub(1).min(32);
        let ceiling = self
            .initial
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.max);
        let ceiling_ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (the wait
/// until then; zero if it has passed).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past: go now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempts in 1..40 {
            let ceiling = (100u64 << (attempts - 1).min(31)).min(2000);
            let mut seen_max = Duration::ZERO;
            for _ in 0..200 {
                let d = b.delay(attempts, None);
                assert!(d <= Duration::from_millis(ceiling), "{attempts}: {d:?}");
                seen_max = seen_max.max(d);
            }
            // Full jitter spreads over the whole range, not a fixed delay.
            assert!(seen_max > Duration::from_millis(ceiling / 2), "{attempts}");
        }
        assert_eq!(
            b.delay(1, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        assert_eq!(
            b.delay(1, Some(Duration::ZERO)),
            Duration::from_millis(100),
            "Retry-After: 0 waits retry_initial"
        );
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(2),
            "a Retry-After is capped at retry_max"
        );
    }
}
