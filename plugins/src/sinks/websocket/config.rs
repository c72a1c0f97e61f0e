//! `[sinks.NAME] type = "websocket"`: its options, defaults and pure
//! validation.

use std::time::Duration;

use bytesize::ByteSize;
use flowpulse_core::plugin::{FieldError, ValidateContext};
use serde::Deserialize;

use crate::http::{self, HttpMount, ServerOptions};

/// `[sinks.NAME] type = "websocket"`: pushes metrics documents, alert
/// notices and (opt-in) live events to WebSocket clients (CONTRACT §3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// `host:port` to serve on; sinks naming the same address share one
    /// server. Default `"127.0.0.1:8080"`.
    #[serde(default = "default_address")]
    pub address: String,
    /// The path of the endpoint. Default `"/ws/monitoring"`.
    #[serde(default = "default_path")]
    pub path: String,
    /// The API token; see the `rest` sink. Empty or absent: the one in
    /// `DATA_DIR/api-token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Whether connecting needs the token (as the subprotocol
    /// `bearer.TOKEN`). Default false.
    #[serde(default)]
    pub auth_reads: bool,
    /// The largest request body of the server, e.g. `"64KiB"` (the
    /// default); must agree with the other sinks at the address.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Origins allowed to call from a browser; must agree with the other
    /// sinks at the address. Default: none.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Frames waiting per client before it counts as slow. Default 16.
    #[serde(default = "default_client_queue")]
    pub client_queue: usize,
    /// How long a client may stay slow before it is closed with 1008 `too
    /// slow`, e.g. `"10s"` (the default).
    #[serde(default = "default_slow_client_timeout", with = "humantime_serde")]
    pub slow_client_timeout: Duration,
    /// The most clients at once; one more is refused with 503. Default 2000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// How often the server pings; a client that has not answered by the
    /// next ping is closed. Default `"30s"`.
    #[serde(default = "default_ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// At most one `events` frame per this interval. Default `"250ms"`.
    #[serde(default = "default_events_interval", with = "humantime_serde")]
    pub events_interval: Duration,
    /// At most this many events per frame, a uniform sample when more
    /// arrived. Default 200.
    #[serde(default = "default_events_per_frame")]
    pub events_per_frame: usize,
}

fn default_address() -> String {
    http::DEFAULT_ADDRESS.into()
}

fn default_path() -> String {
    "/ws/monitoring".into()
}

fn default_max_body() -> ByteSize {
    http::DEFAULT_MAX_BODY
}

fn default_client_queue() -> usize {
    16
}

fn default_slow_client_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_clients() -> usize {
    2000
}

fn default_ping_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_events_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_events_per_frame() -> usize {
    200
}

impl HttpMount for WebSocketConfig {
    fn server_options(&self) -> ServerOptions {
        ServerOptions {
            address: self.address.clone(),
            token: self.token.clone().filter(|t| !t.is_empty()),
            auth_reads: self.auth_reads,
            max_body: self.max_body,
            cors_origins: self.cors_origins.clone(),
        }
    }

    fn paths(&self) -> Vec<String> {
        vec![self.path.clone()]
    }
}

impl WebSocketConfig {
    /// Problems found without I/O.
    pub fn check(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = http::validate_mount(self, cx);
        let segments_ok = self.path.starts_with('/')
            && self.path.len() > 1
            && self.path[1..].split('/').all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            });
        if !segments_ok {
            errors.push(FieldError::new(
                "path",
                "must be an absolute path of plain segments, e.g. \"/ws/monitoring\"",
            ));
        }
        if self.client_queue < 2 {
            errors.push(FieldError::new("client_queue", "must be at least 2"));
        }
        if self.max_clients == 0 {
            errors.push(FieldError::new("max_clients", "must be at least 1"));
        }
        if self.events_per_frame == 0 {
            errors.push(FieldError::new("events_per_frame", "must be at least 1"));
        }
        for (field, value, least) in [
            (
                "slow_client_timeout",
                self.slow_client_timeout,
                Duration::from_millis(100),
            ),
            ("ping_interval", self.ping_interval, Duration::from_secs(1)),
            (
                "events_interval",
                self.events_interval,
                Duration::from_millis(10),
            ),
        ] {
            if value < least {
                errors.push(FieldError::new(
                    field,
                    format!("must be at least {}", humantime::format_duration(least)),
                ));
            }
        }
        errors
    }
}
