//! The routes of the `rest` sink (CONTRACT §4), their handlers, and the
//! types of their answers, from which the OpenAPI document is generated.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use flowpulse_core::metrics::{HistoryPoint, RealtimeMetrics};
use flowpulse_core::telemetry::{ExtraValue, Telemetry};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::config::{RestConfig, PREFIX};
use super::control::{Control, ControlQueued, ControlRequest};
use super::prometheus;
use crate::http::error::{json_bytes, json_response};
use crate::http::{
    authorize, get_or_head, guarded, json_body, requested_by, Access, ApiError, Route, SharedServer,
};
use crate::sinks::util::now_rfc3339;

/// The newest document, with its REST form encoded once.
pub struct Latest {
    /// The document as the aggregate emitted it (the whole history ring).
    pub doc: Arc<RealtimeMetrics>,
    /// `data` of `metrics/realtime`: the document with `history` cut to
    /// its newest point, as JSON.
    pub data: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

/// What the handlers share.
pub struct RestState {
    /// The newest document, once one has arrived.
    pub latest: RwLock<Option<Arc<Latest>>>,
    /// Every component's counters.
    pub telemetry: Telemetry,
    /// The pipeline's name.
    pub pipeline: String,
    /// When the sink was built.
    pub started: Instant,
    /// Workflow control, when configured.
    pub control: Option<Control>,
    /// The store of the alert routes, when configured.
    pub store: Option<Arc<crate::stores::Store>>,
    /// The channels rules may name: notification sinks and `dashboard`.
    pub channels: Vec<String>,
    /// The server, for the routes mounted on it.
    pub server: Arc<SharedServer>,
    /// Whether `/metrics` is served.
    pub prometheus: bool,
    /// The OpenAPI document, made at the first request (every sink has
    /// mounted by then).
    pub openapi: OnceLock<Vec<u8>>,
}

impl RestState {
    /// The store the alert and rule routes serve (`what` they serve, for
    /// the message), or 503 `store_not_configured` naming the option.
    pub fn store_for(&self, what: &str) -> Result<&Arc<crate::stores::Store>, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::unavailable(
                "store_not_configured",
                format!("{what} are served from a store: set `store = \"NAME\"` on this rest sink"),
            )
            .field("store")
        })
    }

    /// The newest metrics document, once one has arrived.
    pub fn latest_document(&self) -> Option<Arc<RealtimeMetrics>> {
        self.latest().map(|l| Arc::clone(&l.doc))
    }

    fn latest(&self) -> Option<Arc<Latest>> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// 503 `store_unavailable` for a failed query of `store` (logged, not told).
pub fn store_unavailable(store: &crate::stores::Store, e: sqlx::Error) -> ApiError {
    tracing::warn!(store = %store.name, "cannot reach the store: {e}");
    ApiError::unavailable(
        "store_unavailable",
        format!(
            "the store \"{}\" cannot be reached; nothing was changed",
            store.name
        ),
    )
}

/// Every route the sink serves, as configured.
pub fn routes(config: &RestConfig) -> Vec<Route> {
    let mut routes = vec![
        Route::new(Method::GET, format!("{PREFIX}/metrics/realtime")),
        Route::new(Method::GET, format!("{PREFIX}/metrics/history")),
        Route::new(Method::GET, format!("{PREFIX}/health")),
        Route::new(Method::GET, format!("{PREFIX}/status")),
        Route::new(Method::GET, "/api/v1/openapi.json"),
        Route::new(Method::POST, "/api/v1/workflows/{id}/control"),
    ];
    if config.prometheus {
        routes.push(Route::new(Method::GET, "/metrics"));
    }
    if config.dashboard {
        routes.extend(super::dashboard::routes());
    }
    routes.extend(super::alerts::routes());
    routes.extend(super::rules::routes());
    routes
}

/// The sink's filter: every route, with auth, bodies and handlers.
pub fn filter(state: Arc<RestState>, config: &RestConfig) -> BoxedFilter<(Response,)> {
    let server = Arc::clone(&state.server);
    let read = authorize(&server, Access::Read, config.auth_reads);
    let token = authorize(&server, Access::Token, config.auth_reads);
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state)).boxed()
    };
    let realtime = warp::path!("api" / "v1" / "monitoring" / "metrics" / "realtime")
        .and(get_or_head())
        .and(read.clone())
        .and(with_state.clone())
        .and_then(|state: Arc<RestState>| guarded(realtime(state)));
    let history = warp::path!("api" / "v1" / "monitoring" / "metrics" / "history")
        .and(get_or_head())
        .and(read.clone())
        .and(with_state.clone())
        .and_then(|state: Arc<RestState>| guarded(history(state)));
    let health = warp::path!("api" / "v1" / "monitoring" / "health")
        .and(get_or_head())
        .and(with_state.clone())
        .and_then(|state: Arc<RestState>| guarded(health(state)));
    let status = warp::path!("api" / "v1" / "monitoring" / "status")
        .and(get_or_head())
        .and(read.clone())
        .and(with_state.clone())
        .and_then(|state: Arc<RestState>| guarded(status(state)));
    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(get_or_head())
        .and(with_state.clone())
        .and_then(|state: Arc<RestState>| guarded(openapi_json(state)));
    let control = warp::path!("api" / "v1" / "workflows" / String / "control")
        .and(warp::post())
        .and(token)
        .and(requested_by())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body::<ControlRequest>(config.max_body))
        .and(with_state.clone())
        .and_then(
            |id: String,
             actor: String,
             key: Option<String>,
             request: ControlRequest,
             state: Arc<RestState>| {
                guarded(control(state, id, actor, key, request))
            },
        );
    let alert_routes = super::alerts::filter(Arc::clone(&state), config);
    let rule_routes = super::rules::filter(Arc::clone(&state), config);
    let mut all = realtime
        .or(history)
        .unify()
        .or(health)
        .unify()
        .or(status)
        .unify()
        .or(openapi)
        .unify()
        .or(control)
        .unify()
        .or(alert_routes)
        .unify()
        .or(rule_routes)
        .unify()
        .boxed();
    if config.prometheus {
        let metrics = warp::path!("metrics")
            .and(get_or_head())
            .and(read)
            .and(with_state)
            .and_then(|state: Arc<RestState>| guarded(metrics_text(state)));
        all = all.or(metrics).unify().boxed();
    }
    if config.dashboard {
        all = all.or(super::dashboard::filter()).unify().boxed();
    }
    all
}

/// `GET M/metrics/realtime`.
#[derive(Serialize, ToSchema)]
pub struct RealtimeAnswer {
    /// The newest document, `history` cut to its newest point.
    pub data: RealtimeMetrics,
    /// When this answer was made (RFC 3339 UTC).
    pub timestamp: String,
    /// Milliseconds until the next document is due.
    pub ttl_ms: u64,
}

/// The newest metrics document.
#[utoipa::path(get, path = "/api/v1/monitoring/metrics/realtime", tag = "metrics",
    responses(
        (status = 200, description = "The newest document", body = RealtimeAnswer),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 503, description = "`metrics_unavailable`: no document yet", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn realtime(state: Arc<RestState>) -> Result<Response, ApiError> {
    let latest = state.latest().ok_or_else(metrics_unavailable)?;
    let ttl_ms = latest
        .doc
        .next_update_in_ms
        .saturating_sub(latest.at.elapsed().as_millis() as u64);
    // The data part was encoded once for every request; this only copies it.
    let timestamp = now_rfc3339();
    let mut body = Vec::with_capacity(latest.data.len() + 80);
    body.extend_from_slice(b"{\"data\":");
    body.extend_from_slice(&latest.data);
    body.extend_from_slice(b",\"timestamp\":\"");
    body.extend_from_slice(timestamp.as_bytes());
    body.extend_from_slice(b"\",\"ttl_ms\":");
    body.extend_from_slice(ttl_ms.to_string().as_bytes());
    body.push(b'}');
    let mut response = json_bytes(StatusCode::OK, body);
    response.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("no-cache, must-revalidate"),
    );
    Ok(response)
}

fn metrics_unavailable() -> ApiError {
    ApiError::unavailable(
        "metrics_unavailable",
        "no metrics document yet; the aggregate emits one every interval",
    )
}

/// `GET M/metrics/history`.
#[derive(Serialize, ToSchema)]
pub struct HistoryAnswer {
    /// The history ring.
    pub data: HistoryData,
}

/// The whole history ring.
#[derive(Serialize, ToSchema)]
pub struct HistoryData {
    /// The emission interval (one point per interval of event time).
    pub interval_ms: u64,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
}

#[derive(Serialize)]
struct HistoryAnswerRef<'a> {
    data: HistoryDataRef<'a>,
}

#[derive(Serialize)]
struct HistoryDataRef<'a> {
    interval_ms: u64,
    points: &'a [HistoryPoint],
}

/// The whole history ring of the newest document.
#[utoipa::path(get, path = "/api/v1/monitoring/metrics/history", tag = "metrics",
    responses(
        (status = 200, description = "Every history point, oldest first", body = HistoryAnswer),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 503, description = "`metrics_unavailable`: no document yet", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn history(state: Arc<RestState>) -> Result<Response, ApiError> {
    let latest = state.latest().ok_or_else(metrics_unavailable)?;
    // Serialized straight from the shared document: no copy of the ring.
    Ok(json_response(
        StatusCode::OK,
        &HistoryAnswerRef {
            data: HistoryDataRef {
                interval_ms: latest.doc.next_update_in_ms,
                points: &latest.doc.history,
            },
        },
    ))
}

/// `GET M/health`: flat, for load balancers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// False while a component is in an outage.
    pub healthy: bool,
    /// Whether a metrics document has arrived.
    pub aggregator_ready: bool,
    /// When this answer was made.
    pub timestamp: String,
    /// Every component: `ok`, or why it is not.
    pub checks: BTreeMap<String, String>,
}

/// Readiness: 503 while a component is in an outage.
#[utoipa::path(get, path = "/api/v1/monitoring/health", tag = "service",
    responses(
        (status = 200, description = "Every component is fine", body = Health),
        (status = 503, description = "A component is in an outage", body = Health),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn health(state: Arc<RestState>) -> Result<Response, ApiError> {
    let checks: BTreeMap<String, String> = state
        .telemetry
        .components()
        .map(|(name, c)| {
            let check = c.stats.outage().unwrap_or_else(|| "ok".into());
            (name.to_owned(), check)
        })
        .collect();
    let healthy = checks.values().all(|c| c == "ok");
    let body = Health {
        healthy,
        aggregator_ready: state.latest().is_some(),
        timestamp: now_rfc3339(),
        checks,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(status, &body))
}

/// `GET M/status`: flat, for older tools.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `running`, `initializing` (no document yet) or `error` (a component
    /// in an outage).
    pub status: &'static str,
    /// Whether a metrics document has arrived.
    pub metrics_available: bool,
    /// `last_update` of the newest document.
    pub last_update: Option<String>,
    /// When this answer was made.
    pub timestamp: String,
    /// Flowpulse's version.
    pub version: &'static str,
    /// The pipeline's name.
    pub pipeline: String,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Every component's counters, by name.
    pub components: BTreeMap<String, ComponentStatus>,
}

/// One component in `status`.
#[derive(Serialize, ToSchema)]
pub struct ComponentStatus {
    /// `source`, `processor` or `sink`.
    pub role: &'static str,
    /// The plugin type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Records received.
    pub records_in: u64,
    /// Records sent on.
    pub records_out: u64,
    /// Failures.
    pub errors: u64,
    /// Records dropped on purpose.
    pub dropped: u64,
    /// Bad input.
    pub malformed: u64,
    /// Valid input not tracked.
    pub ignored: u64,
    /// Backlog upstream of a source.
    pub lag: u64,
    /// The same per partition the source reads (a Kafka source), by
    /// partition; absent for other sources.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_lag: BTreeMap<String, u64>,
    /// The most recent error.
    pub last_error: Option<String>,
    /// Why it cannot reach what it depends on, while it cannot.
    pub outage: Option<String>,
    /// The wall time of the last record in (RFC 3339), if any.
    pub last_record_at: Option<String>,
    /// The component's own counters and gauges.
    #[serde(flatten)]
    pub extra: BTreeMap<String, i64>,
}

/// Every component's counters.
#[utoipa::path(get, path = "/api/v1/monitoring/status", tag = "service",
    responses(
        (status = 200, description = "The pipeline and its components", body = Status),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn status(state: Arc<RestState>) -> Result<Response, ApiError> {
    let latest = state.latest();
    let components: BTreeMap<String, ComponentStatus> = state
        .telemetry
        .components()
        .map(|(name, c)| {
            let s = c.stats.snapshot();
            let extra = s
                .extra
                .iter()
                .map(|(k, v)| {
                    let v = match *v {
                        ExtraValue::Counter(n) => i64::try_from(n).unwrap_or(i64::MAX),
                        ExtraValue::Gauge(n) => n,
                    };
                    ((*k).to_owned(), v)
                })
                .collect();
            let status = ComponentStatus {
                role: c.role.as_str(),
                type_name: c.type_name.clone(),
                records_in: s.records_in,
                records_out: s.records_out,
                errors: s.errors,
                dropped: s.dropped,
                malformed: s.malformed,
                ignored: s.ignored,
                lag: s.lag,
                partition_lag: s.partition_lag,
                last_error: s.last_error,
                outage: s.outage,
                last_record_at: s
                    .last_record_at_ms
                    .map(flowpulse_core::event::format_rfc3339_ms),
                extra,
            };
            (name.to_owned(), status)
        })
        .collect();
    let in_outage = components.values().any(|c| c.outage.is_some());
    let body = Status {
        status: if in_outage {
            "error"
        } else if latest.is_none() {
            "initializing"
        } else {
            "running"
        },
        metrics_available: latest.is_some(),
        last_update: latest.as_ref().map(|l| l.doc.last_update.clone()),
        timestamp: now_rfc3339(),
        version: env!("CARGO_PKG_VERSION"),
        pipeline: state.pipeline.clone(),
        uptime_ms: state.started.elapsed().as_millis() as u64,
        components,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The §4 error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// snake_case, e.g. `unauthorized`.
    pub code: String,
    /// For people.
    pub message: String,
    /// The offending field or parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service",
    responses(
        (status = 200, description = "The OpenAPI 3 document of every route this server has"),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn openapi_json(state: Arc<RestState>) -> Result<Response, ApiError> {
    let bytes = state.openapi.get_or_init(|| {
        let doc = openapi_document(&state);
        doc.to_json().map(String::into_bytes).unwrap_or_default()
    });
    Ok(json_bytes(StatusCode::OK, bytes.clone()))
}

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition 0.0.4", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn metrics_text(state: Arc<RestState>) -> Result<Response, ApiError> {
    let latest = state.latest();
    let text = prometheus::render(latest.as_ref().map(|l| l.doc.as_ref()), &state.telemetry);
    let mut response = Response::new(text.into());
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static(prometheus::CONTENT_TYPE),
    );
    Ok(response)
}

/// `POST /api/v1/workflows/{id}/control`.
#[derive(Serialize, ToSchema)]
pub struct ControlAnswer {
    /// The queued command.
    pub data: ControlQueued,
}

/// Queues a control command for the orchestrator (CONTRACT §6).
#[utoipa::path(post, path = "/api/v1/workflows/{id}/control", tag = "control",
    params(
        ("id" = String, Path, description = "The workflow id: 1–200 of A-Za-z0-9._:-"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters: the same key for the same workflow within 24 h queues nothing new"),
        ("X-Requested-By" = Option<String>, Header, description = "Recorded as `api:NAME`"),
    ),
    request_body = ControlRequest,
    responses(
        (status = 202, description = "Queued", body = ControlAnswer),
        (status = 400, description = "`invalid_action`, `invalid_json` or `invalid_parameter`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "`control_not_configured` or `control_unavailable`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
pub async fn control(
    state: Arc<RestState>,
    id: String,
    actor: String,
    key: Option<String>,
    request: ControlRequest,
) -> Result<Response, ApiError> {
    let control = state.control.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "control_not_configured",
            "workflow control is off: set `control = { url = \"redis://…\" }` on this rest sink",
        )
        .field("control")
    })?;
    let queued = control.queue(&id, request, key.as_deref(), &actor).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &ControlAnswer { data: queued },
    ))
}

/// The WebSocket endpoint, as the OpenAPI document shows it.
#[utoipa::path(get, path = "/ws/monitoring", tag = "metrics",
    responses(
        (status = 101, description = "Upgraded to a WebSocket (CONTRACT §3)"),
        (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody),
        (status = 401, description = "`auth_reads = true` and no `bearer.TOKEN` subprotocol", body = ErrorBody),
        (status = 503, description = "`max_clients` reached", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn websocket_doc() {}

/// The dashboard's page, as the OpenAPI document shows it.
#[utoipa::path(get, path = "/", operation_id = "dashboard_page", tag = "dashboard",
    responses(
        (status = 200, description = "The dashboard's page (`text/html`), with an `ETag`"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn dashboard_doc() {}

/// The dashboard's scripts and styles, as the OpenAPI document shows them.
#[utoipa::path(get, path = "/assets/{file}", operation_id = "dashboard_asset", tag = "dashboard",
    params(("file" = String, Path, description = "The asset's file name")),
    responses(
        (status = 200, description = "The asset, with its content type and an `ETag`"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "`not_found`: no such asset", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn dashboard_asset_doc() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flowpulse",
        description = "Live workflow metrics, health and workflow control (CONTRACT §4)."
    ),
    paths(
        realtime,
        history,
        health,
        status,
        openapi_json,
        metrics_text,
        control,
        websocket_doc,
        dashboard_doc,
        dashboard_asset_doc,
        super::alerts::list,
        super::alerts::one,
        super::alerts::acknowledge,
        super::alerts::resolve,
        super::rules::list,
        super::rules::create,
        super::rules::one,
        super::rules::replace,
        super::rules::remove,
        super::rules::mute,
        super::rules::unmute
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        RealtimeAnswer,
        HistoryAnswer,
        Health,
        Status,
        ControlAnswer,
        ControlRequest,
        super::alerts::AlertList,
        super::alerts::AlertWithHistoryAnswer,
        super::alerts::AlertAnswer,
        super::alerts::AcknowledgeRequest,
        super::alerts::ResolveRequest,
        super::rules::RuleList,
        super::rules::RuleAnswer,
        super::rules::DryRunAnswer,
        super::rules::MuteRequest
    ))
)]
struct ApiDoc;

/// The OpenAPI document of exactly the routes this server has: those of
/// this sink and of the WebSocket sinks sharing its address.
fn openapi_document(state: &RestState) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let mounted = state.server.routes();
    let ws_item = doc.paths.paths.remove("/ws/monitoring");
    // Only what is mounted: `/metrics` only with `prometheus`, the
    // dashboard only beside a `dashboard` sink.
    doc.paths
        .paths
        .retain(|path, _| mounted.iter().any(|route| &route.path == path));
    // The other GET routes are the WebSocket sinks' (their paths are
    // configured), each its own operation.
    if let Some(item) = ws_item {
        for route in &mounted {
            if route.method == Method::GET && !doc.paths.paths.contains_key(&route.path) {
                let mut item = item.clone();
                if let Some(get) = item.get.as_mut() {
                    get.operation_id = Some(websocket_operation_id(&route.path));
                }
                doc.paths.paths.insert(route.path.clone(), item);
            }
        }
    }
    doc
}

/// A WebSocket path's operation id: `websocket` and the path's letters and
/// digits (`/ws/monitoring` → `websocket_ws_monitoring`), unique per path.
fn websocket_operation_id(path: &str) -> String {
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    format!("websocket_{}", words.join("_"))
}
