//! What the HTTP sinks (`rest`, `websocket`) share: one warp server per
//! address ([`server`]), the token ([`auth`]), the §4 error body and the
//! `recover` that makes every rejection one ([`error`]), and the filters
//! every route uses (auth, JSON bodies, panics answered as 500).

pub mod auth;
pub mod error;
pub mod server;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytesize::ByteSize;
use flowpulse_core::plugin::{ComponentRole, FieldError, ValidateContext};
use futures::FutureExt as _;
use serde::de::DeserializeOwned;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub use error::ApiError;
pub use server::{HttpServers, Mount, Route, SharedServer};

/// The default address of the HTTP sinks.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";

/// The default `max_body`.
pub const DEFAULT_MAX_BODY: ByteSize = ByteSize::kib(64);

/// The options of the server at one address: every sink naming the address
/// must agree on them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// `host:port`; port 0 picks a free port.
    pub address: String,
    /// The API token; empty or absent: `DATA_DIR/api-token`.
    pub token: Option<String>,
    /// Whether reads need the token too.
    pub auth_reads: bool,
    /// The largest request body.
    pub max_body: ByteSize,
    /// Origins allowed to call from a browser (CORS); empty: same origin only.
    pub cors_origins: Vec<String>,
}

/// A sink that mounts routes on a shared server: what validation compares.
pub trait HttpMount {
    /// The server options it asks for.
    fn server_options(&self) -> ServerOptions;
    /// The paths it mounts.
    fn paths(&self) -> Vec<String>;
}

/// The HTTP mount of a component, if it is an HTTP sink.
fn mount_of(view: &flowpulse_core::topology::ComponentView) -> Option<&dyn HttpMount> {
    if view.role != ComponentRole::Sink {
        return None;
    }
    if let Some(rest) = view.config::<crate::sinks::rest::RestConfig>() {
        return Some(rest);
    }
    if let Some(ws) = view.config::<crate::sinks::websocket::WebSocketConfig>() {
        return Some(ws);
    }
    None
}

/// Problems of one HTTP sink's server options, and conflicts with the HTTP
/// sinks declared before it at the same address (a path mounted twice,
/// options that differ), naming both sinks.
pub fn validate_mount(mine: &dyn HttpMount, cx: &ValidateContext<'_>) -> Vec<FieldError> {
    let options = mine.server_options();
    let mut errors = Vec::new();
    if let Err(e) = check_address(&options.address) {
        errors.push(FieldError::new("address", e));
    }
    if let Some(token) = options.token.as_deref().filter(|t| !t.is_empty()) {
        if let Err(e) = auth::check_token(token) {
            errors.push(FieldError::new("token", e));
        }
    }
    if options.max_body < ByteSize::kib(1) || options.max_body > ByteSize::mib(64) {
        errors.push(FieldError::new(
            "max_body",
            "must be between \"1KiB\" and \"64MiB\"",
        ));
    }
    for origin in &options.cors_origins {
        if let Err(e) = check_origin(origin) {
            errors.push(FieldError::new("cors_origins", e));
        }
    }
    for other in cx.topology.components() {
        if other.name == cx.component {
            // Only sinks declared before this one: each conflict is told once.
            break;
        }
        let Some(theirs) = mount_of(other) else {
            continue;
        };
        let their_options = theirs.server_options();
        if their_options.address != options.address {
            continue;
        }
        let them = format!("sink \"{}\"", other.name);
        for path in mine.paths() {
            if theirs.paths().contains(&path) {
                errors.push(FieldError::new(
                    "path",
                    format!("{path} at {} is also mounted by {them}", options.address),
                ));
            }
        }
        let differs = [
            ("max_body", their_options.max_body != options.max_body),
            (
                "cors_origins",
                their_options.cors_origins != options.cors_origins,
            ),
            ("token", their_options.token != options.token),
            ("auth_reads", their_options.auth_reads != options.auth_reads),
        ];
        for (field, differ) in differs {
            if differ {
                errors.push(FieldError::new(
                    field,
                    format!(
                        "differs from {them}, which serves the same address {}; sinks sharing an address must agree on it",
                        options.address
                    ),
                ));
            }
        }
    }
    errors
}

fn check_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "`{address}` is not host:port, e.g. \"127.0.0.1:8080\""
        ));
    };
    if host.is_empty() {
        return Err(format!("`{address}` has no host; e.g. \"0.0.0.0:8080\""));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("`{address}`: the port must be 0 to 65535"))
}

fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("`{origin}` is not an origin like \"https://example.com\""))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "`{origin}` is not an origin (scheme://host[:port], no path)"
        ));
    }
    Ok(())
}

/// `GET`, and `HEAD` (the same answer without its body) where `GET` is.
pub fn get_or_head() -> BoxedFilter<()> {
    warp::get().or(warp::head()).unify().boxed()
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Open unless the server sets `auth_reads = true`.
    Read,
    /// Always needs the token.
    Token,
}

/// Lets a request through when `access` allows it, else rejects it with
/// 401 `unauthorized`.
pub fn authorize(server: &Arc<SharedServer>, access: Access, auth_reads: bool) -> BoxedFilter<()> {
    if access == Access::Read && !auth_reads {
        return warp::any().boxed();
    }
    let server = Arc::clone(server);
    warp::header::optional::<String>("authorization")
        .and_then(move |authorization: Option<String>| {
            let ok = server.token().authorizes(authorization.as_deref());
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(Rejection::from(ApiError::unauthorized()))
                }
            }
        })
        .untuple_one()
        .boxed()
}

/// How much of a refused body is read (and discarded) before answering:
/// a server that answers without reading what the client is still sending
/// resets the connection, and the client never sees the answer.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// A JSON body of at most `max_body` bytes, parsed into `T`: 413 when
/// larger, 415 when not `application/json`, 400 `invalid_json` naming the
/// field (or line and column) when it does not parse. Chunked bodies are
/// taken too; a refused body is drained (up to 1 MiB) so that the client
/// reads the answer.
pub fn json_body<T: DeserializeOwned + Send + 'static>(max_body: ByteSize) -> BoxedFilter<(T,)> {
    json_body_as(max_body, "invalid_json")
}

/// [`json_body`], answering a body that is JSON but whose field is wrong
/// (a bad value, a missing or unknown field) with `field_code` rather than
/// `invalid_json`, as `invalid_rule` for a rule.
pub fn json_body_as<T: DeserializeOwned + Send + 'static>(
    max_body: ByteSize,
    field_code: &'static str,
) -> BoxedFilter<(T,)> {
    let max = max_body.as_u64();
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |content_type: Option<String>, length: Option<u64>, body| async move {
                let too_large = || {
                    Rejection::from(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("the body is larger than this server's `max_body` ({max} bytes)"),
                    ))
                };
                if length.is_some_and(|n| n > DRAIN_LIMIT) {
                    return Err(too_large());
                }
                let (bytes, total) = read_body(body, max).await?;
                if total > max {
                    return Err(too_large());
                }
                let is_json = content_type.as_deref().is_some_and(|ct| {
                    ct.split(';')
                        .next()
                        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
                });
                if !is_json {
                    return Err(Rejection::from(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "the body must be JSON with `Content-Type: application/json`",
                    )));
                }
                parse_json_as(&bytes, field_code).map_err(Rejection::from)
            },
        )
        .boxed()
}

/// Reads a body, keeping at most `max` bytes and discarding the rest up to
/// [`DRAIN_LIMIT`]; returns what it kept and how many bytes it saw.
async fn read_body<S, B>(body: S, max: u64) -> Result<(Vec<u8>, u64), Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures::StreamExt as _;
    let mut body = std::pin::pin!(body);
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            Rejection::from(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body could not be read: {e}"),
            ))
        })?;
        total += chunk.remaining() as u64;
        if total <= max {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                kept.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    Ok((kept, total))
}

/// Parses a JSON body, naming the offending field where serde knows it.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_json_as(body, "invalid_json")
}

/// [`parse_json`], with `field_code` for an error a field is to blame for.
pub fn parse_json_as<T: DeserializeOwned>(
    body: &[u8],
    field_code: &'static str,
) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => Ok(value),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            let at_root = path == "." || path == "?";
            if at_root && inner.is_data() && !body.trim_ascii_start().starts_with(b"{") {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "the body must be a JSON object",
                ));
            }
            // Named from the root (`condition.durationms`), and only where
            // a field is to blame, not the syntax.
            let field = match unknown_field(&message) {
                Some(name) if at_root => Some(name),
                Some(name) if path.ends_with(&name) => Some(path),
                Some(name) => Some(format!("{path}.{name}")),
                None if inner.is_data() && !at_root => Some(path),
                // A number past f64's range is a value, though serde_json
                // calls it syntax.
                None if message.starts_with("number out of range") && !at_root => Some(path),
                None => None,
            };
            Err(match field {
                Some(field) => {
                    ApiError::new(StatusCode::BAD_REQUEST, field_code, message).field(field)
                }
                None => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message),
            })
        }
    }
}

/// The field an "unknown field `x`" or "missing field `x`" error names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
}

/// Runs a handler, answering a panic in it with 500 `internal` (logged)
/// instead of dropping the connection, and an error with its §4 body.
pub async fn guarded<F>(handler: F) -> Result<Response, Rejection>
where
    F: Future<Output = Result<Response, ApiError>> + Send,
{
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Ok(e.response()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("a request handler panicked: {what}");
            Ok(ApiError::internal().response())
        }
    }
}

/// The actor a mutating request is recorded as: `api`, or `api:NAME` from
/// `X-Requested-By: NAME` (1–64 of `A-Za-z0-9._@-`).
pub fn requested_by() -> BoxedFilter<(String,)> {
    warp::header::optional::<String>("x-requested-by")
        .and_then(|name: Option<String>| async move {
            match name {
                None => Ok("api".to_owned()),
                Some(name)
                    if (1..=64).contains(&name.len())
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b)) =>
                {
                    Ok(format!("api:{name}"))
                }
                Some(_) => Err(Rejection::from(ApiError::invalid_parameter(
                    "X-Requested-By",
                    "must be 1 to 64 characters of A-Za-z0-9 . _ @ -",
                ))),
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        action: String,
    }

    #[test]
    fn a_body_error_names_the_field() {
        let e = parse_json::<Body>(br#"{"action": "x", "colour": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));
        let e = parse_json::<Body>(br#"{"action": 3}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("action"));
        let e = parse_json::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("action"));
        let e = parse_json::<Body>(b"{\n\"action\"").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        // Truncated: the syntax is to blame, no field.
        assert_eq!(e.field, None);
        let e = parse_json::<Body>(b"[]").unwrap_err();
        assert_eq!(e.message, "the body must be a JSON object");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        condition: Body,
    }

    #[test]
    fn a_nested_field_is_named_from_the_root() {
        let e = parse_json::<Outer>(br#"{"condition": {"action": "x", "colour": 1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("condition.colour"));
        let e = parse_json::<Outer>(br#"{"condition": {}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("condition.action"));
        let e = parse_json::<Outer>(br#"{"condition": {"action": 3}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("condition.action"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Numbers {
        value: f64,
    }

    #[test]
    fn a_field_error_takes_the_routes_code_and_syntax_stays_invalid_json() {
        let e =
            parse_json_as::<Outer>(br#"{"condition": {"action": 3}}"#, "invalid_rule").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_rule", Some("condition.action"))
        );
        let e =
            parse_json_as::<Outer>(br#"{"condition": {"action": "#, "invalid_rule").unwrap_err();
        assert_eq!((e.code, e.field), ("invalid_json", None));
        let e = parse_json_as::<Outer>(b"[]", "invalid_rule").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        // Out of f64's range: the value is to blame.
        let e = parse_json_as::<Numbers>(br#"{"value": 1e400}"#, "invalid_rule").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_rule", Some("value"))
        );
        assert_eq!(
            parse_json::<Numbers>(br#"{"value": 1e400}"#)
                .unwrap_err()
                .code,
            "invalid_json"
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_error_body() {
        let handler = async {
            // A bug in a handler: the server must answer, not drop the connection.
            let index = std::hint::black_box(3);
            let empty: [u8; 0] = [];
            let _ = empty[index];
            Ok(ApiError::not_found("unreachable").response())
        };
        let response = guarded(handler).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/json");
    }

    #[test]
    fn addresses_and_origins_are_checked() {
        assert!(check_address("127.0.0.1:8080").is_ok());
        assert!(check_address("[::1]:0").is_ok());
        assert!(check_address("localhost").is_err());
        assert!(check_address("127.0.0.1:99999").is_err());
        assert!(check_origin("https://example.com:8443").is_ok());
        assert!(check_origin("example.com").is_err());
        assert!(check_origin("https://example.com/app").is_err());
    }
}
