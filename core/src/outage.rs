//! An outage of something a component depends on (a Redis server, an HTTP
//! endpoint, …): logged once when it starts and once when it ends, never per
//! attempt, with the wait between attempts growing exponentially so a long
//! outage costs little.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redact::redact_url;
use crate::telemetry::ComponentStats;

/// The wait after the first failed attempt of an outage.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between attempts: short enough that recovery is noticed
/// within seconds.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Tracks one outage of a dependency: logs its start once, its end once, and
/// says how long to wait before the next attempt (100 ms, doubling each
/// time, at most 5 s).
///
/// ```
/// use std::time::Duration;
/// use flowpulse_core::outage::Outage;
///
/// let mut outage = Outage::new("Redis");
/// let refused = "connection refused";
/// // Logs "cannot reach redis://127.0.0.1:6379 (connection refused); is Redis running? …"
/// let wait = outage.failed("cache", "redis://127.0.0.1:6379", &refused);
/// assert_eq!(wait, Duration::from_millis(100));
/// assert!(outage.ongoing());
/// // Logs "reconnected to redis://127.0.0.1:6379 after …"
/// outage.recovered("cache", "redis://127.0.0.1:6379");
/// assert!(!outage.ongoing());
/// ```
#[derive(Debug)]
pub struct Outage {
    /// What is unreachable, as the log names it: "is {what} running?".
    what: &'static str,
    since: Option<Instant>,
    delay: Duration,
    /// Told of the outage, so `/health` and `/status` show it.
    stats: Option<Arc<ComponentStats>>,
    /// Whether its start and end are logged.
    logged: bool,
}

impl Outage {
    /// No outage yet, of the dependency called `what` (e.g. `"Redis"`).
    pub fn new(what: &'static str) -> Outage {
        Outage {
            what,
            since: None,
            delay: FIRST_DELAY,
            stats: None,
            logged: true,
        }
    }

    /// Neither start nor end is logged: for a helper task of a component
    /// whose main loop already logs the same server's outage, so an outage
    /// is still one line per component.
    pub fn unlogged(mut self) -> Outage {
        self.logged = false;
        self
    }

    /// Also sets the component's outage in its telemetry
    /// ([`ComponentStats::set_outage`]) while one is going on.
    pub fn reporting_to(mut self, stats: Arc<ComponentStats>) -> Outage {
        self.stats = Some(stats);
        self
    }

    /// Records a failed attempt to reach `url` (logged without its password);
    /// returns how long to wait before the next one.
    pub fn failed(
        &mut self,
        component: &str,
        url: &str,
        error: &dyn std::fmt::Display,
    ) -> Duration {
        if let Some(stats) = &self.stats {
            stats.set_outage(Some(format!("cannot reach {} ({error})", redact_url(url))));
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.delay = FIRST_DELAY;
            if self.logged {
                tracing::warn!(
                    component,
                    "cannot reach {} ({error}); is {} running? retrying with backoff",
                    redact_url(url),
                    self.what
                );
            }
        } else {
            self.delay = (self.delay * 2).min(MAX_DELAY);
        }
        self.delay
    }

    /// Records a success, logging the end of an outage if one was going on.
    pub fn recovered(&mut self, component: &str, url: &str) {
        if let Some(since) = self.since.take() {
            if let Some(stats) = &self.stats {
                stats.set_outage(None);
            }
            if self.logged {
                tracing::info!(
                    component,
                    "reconnected to {} after {:.1}s",
                    redact_url(url),
                    since.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// Whether an outage is going on.
    pub fn ongoing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(outage: &mut Outage) -> u64 {
        outage
            .failed("c", "redis://127.0.0.1:1", &"refused")
            .as_millis() as u64
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_5s() {
        let mut outage = Outage::new("Redis");
        let waits: Vec<u64> = (0..9).map(|_| fail(&mut outage)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn a_new_outage_starts_its_backoff_again() {
        let mut outage = Outage::new("Redis");
        fail(&mut outage);
        fail(&mut outage);
        outage.recovered("c", "redis://127.0.0.1:1");
        assert!(!outage.ongoing());
        assert_eq!(fail(&mut outage), 100);
        assert!(outage.ongoing());
    }

    #[test]
    fn the_component_telemetry_shows_the_outage_without_the_password() {
        let stats = Arc::new(ComponentStats::default());
        let mut outage = Outage::new("Redis").reporting_to(Arc::clone(&stats));
        outage.failed("c", "redis://user:secret@127.0.0.1:1", &"refused");
        let reason = stats.outage().unwrap();
        assert!(
            reason.contains("refused") && !reason.contains("secret"),
            "{reason}"
        );
        outage.recovered("c", "redis://127.0.0.1:1");
        assert_eq!(stats.outage(), None);
    }
}
