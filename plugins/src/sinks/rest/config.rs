//! `[sinks.NAME] type = "rest"`: its options, defaults and pure validation.

use bytesize::ByteSize;
use flowpulse_core::plugin::{FieldError, ValidateContext};
use serde::Deserialize;

use crate::http::{self, HttpMount, ServerOptions};

/// The prefix of the monitoring routes (CONTRACT §4 `M`).
pub const PREFIX: &str = "/api/v1/monitoring";

/// `[sinks.NAME] type = "rest"`: serves the newest metrics document, health,
/// status, OpenAPI, Prometheus text and workflow control over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// `host:port` to serve on; sinks naming the same address share one
    /// server. Default `"127.0.0.1:8080"`; port 0 picks a free port.
    #[serde(default = "default_address")]
    pub address: String,
    /// The API token (16–256 of `A-Za-z0-9._~-`). Empty or absent: the one
    /// in `DATA_DIR/api-token`, created on first start. Usually
    /// `"${FLOWPULSE_API_TOKEN:-}"`.
    #[serde(default)]
    pub token: Option<String>,
    /// Whether reads (metrics, status, `/metrics`) need the token too.
    /// Default false.
    #[serde(default)]
    pub auth_reads: bool,
    /// The largest request body, e.g. `"64KiB"` (the default).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Origins allowed to call from a browser, e.g.
    /// `["https://ops.example.com"]`. Default: none (same origin only).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Serve the dashboard at `/` (and its files at `/assets/…`). Default
    /// false.
    #[serde(default)]
    pub dashboard: bool,
    /// Serve Prometheus text at `/metrics`. Default true.
    #[serde(default = "default_true")]
    pub prometheus: bool,
    /// A `[stores.NAME]` the alert routes read and change. Unset: they
    /// answer 503 `store_not_configured`.
    #[serde(default)]
    pub store: Option<String>,
    /// Where workflow control commands are queued (CONTRACT §6). Unset:
    /// `POST /api/v1/workflows/{id}/control` answers 503
    /// `control_not_configured`.
    #[serde(default)]
    pub control: Option<ControlConfig>,
}

/// `control = { url, stream, maxlen }` of a `rest` sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `redis://…` of the orchestrator's Redis; never logged with its
    /// password.
    pub url: String,
    /// The control stream. Default `"stream:workflow:control"`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// The stream's approximate cap (`MAXLEN ~`). Default 100000.
    #[serde(default = "default_maxlen")]
    pub maxlen: u64,
}

fn default_address() -> String {
    http::DEFAULT_ADDRESS.into()
}

fn default_max_body() -> ByteSize {
    http::DEFAULT_MAX_BODY
}

fn default_true() -> bool {
    true
}

fn default_stream() -> String {
    "stream:workflow:control".into()
}

fn default_maxlen() -> u64 {
    100_000
}

impl HttpMount for RestConfig {
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
        super::routes::routes(self)
            .into_iter()
            .map(|r| r.path)
            .collect()
    }
}

impl RestConfig {
    /// Problems found without I/O.
    pub fn check(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = http::validate_mount(self, cx);
        if let Some(store) = &self.store {
            if let Some(e) = flowpulse_core::config::unknown_store(cx.stores, store) {
                errors.push(FieldError::new("store", e));
            }
        }
        if let Some(control) = &self.control {
            if let Err(e) = crate::redis_util::client(&control.url) {
                errors.push(FieldError::new("control.url", e));
            }
            if control.stream.is_empty() {
                errors.push(FieldError::new("control.stream", "must not be empty"));
            }
            if control.maxlen == 0 {
                errors.push(FieldError::new("control.maxlen", "must be at least 1"));
            }
        }
        errors
    }
}
