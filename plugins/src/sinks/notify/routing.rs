//! Which notices a notification sink takes, and which of those it sends.

use std::time::Duration;

use flowpulse_core::alert::{Alert, AlertStatus, Severity};
use flowpulse_core::event::parse_rfc3339_ms;

/// The routing options every notification sink shares.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The sink's name, as rules' `channels` name it.
    pub name: String,
    /// Take every alert, whatever its rule's `channels`.
    pub all_alerts: bool,
    /// The least severity taken.
    pub min_severity: Severity,
    /// Send `alert:resolved` notices.
    pub send_resolved: bool,
    /// Send `alert:acknowledged` notices.
    pub send_acknowledged: bool,
    /// A notice whose `as_of` is further behind the wall clock is kept but
    /// not sent.
    pub max_notify_lag: Duration,
}

/// What a sink does with one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not for this sink (another channel, below `min_severity`, a status
    /// it does not send): released at once, not kept.
    Pass,
    /// Kept in the outbox as `skipped`, not sent: the reason.
    Skip(&'static str),
    /// Kept in the outbox and delivered.
    Deliver,
}

/// How urgent, for comparisons: info < warning < critical.
fn rank(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

impl Routing {
    /// Where `alert` goes, at wall-clock `now_ms`.
    pub fn route(&self, alert: &Alert, now_ms: i64) -> Route {
        let named = self.all_alerts || alert.channels.contains(&self.name);
        let wanted = match alert.status {
            AlertStatus::Triggered => true,
            AlertStatus::Resolved => self.send_resolved,
            AlertStatus::Acknowledged => self.send_acknowledged,
        };
        if !named || !wanted || rank(alert.severity) < rank(self.min_severity) {
            return Route::Pass;
        }
        if alert.muted {
            return Route::Skip("muted");
        }
        // A backlog replayed hours later must not page anyone about then.
        let lag_ms = parse_rfc3339_ms(&alert.as_of).map(|as_of| now_ms - as_of);
        if lag_ms.is_some_and(|lag| lag > self.max_notify_lag.as_millis() as i64) {
            return Route::Skip("stale");
        }
        Route::Deliver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpulse_core::event::format_rfc3339_ms;

    fn routing() -> Routing {
        Routing {
            name: "ops".into(),
            all_alerts: false,
            min_severity: Severity::Warning,
            send_resolved: true,
            send_acknowledged: false,
            max_notify_lag: Duration::from_secs(300),
        }
    }

    fn alert(now: i64) -> Alert {
        serde_json::from_value(serde_json::json!({
            "id": "a", "rule_id": "r", "rule_name": "n", "severity": "critical",
            "status": "triggered", "message": "m", "data": {}, "channels": ["ops"],
            "as_of": format_rfc3339_ms(now - 1000), "created_at": format_rfc3339_ms(now),
            "acknowledged_at": null, "resolved_at": null
        }))
        .unwrap()
    }

    #[test]
    fn routes_by_channel_severity_status_mute_and_lag() {
        let now = 1_800_000_000_000;
        let r = routing();
        let a = alert(now);
        assert_eq!(r.route(&a, now), Route::Deliver);

        let other = Alert {
            channels: vec!["dashboard".into()],
            ..a.clone()
        };
        assert_eq!(r.route(&other, now), Route::Pass);
        let all = Routing {
            all_alerts: true,
            ..routing()
        };
        assert_eq!(all.route(&other, now), Route::Deliver);

        let info = Alert {
            severity: Severity::Info,
            ..a.clone()
        };
        assert_eq!(r.route(&info, now), Route::Pass);
        let warning = Alert {
            severity: Severity::Warning,
            ..a.clone()
        };
        assert_eq!(r.route(&warning, now), Route::Deliver);

        let acked = Alert {
            status: AlertStatus::Acknowledged,
            ..a.clone()
        };
        assert_eq!(r.route(&acked, now), Route::Pass);
        let resolved = Alert {
            status: AlertStatus::Resolved,
            ..a.clone()
        };
        assert_eq!(r.route(&resolved, now), Route::Deliver);
        let quiet = Routing {
            send_resolved: false,
            send_acknowledged: true,
            ..routing()
        };
        assert_eq!(quiet.route(&resolved, now), Route::Pass);
        assert_eq!(quiet.route(&acked, now), Route::Deliver);

        let muted = Alert {
            muted: true,
            ..a.clone()
        };
        assert_eq!(r.route(&muted, now), Route::Skip("muted"));
        let old = Alert {
            as_of: format_rfc3339_ms(now - 301_000),
            ..a
        };
        assert_eq!(r.route(&old, now), Route::Skip("stale"));
    }
}
