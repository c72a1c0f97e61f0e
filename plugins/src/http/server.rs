//! One warp server per address, shared by the sinks that name it.
//!
//! The first sink to name an address binds it (in `build`, so a port in use
//! fails the start naming sink and address); every sink mounts its routes;
//! the server accepts from [`BuildContext::started`] and lives until the
//! last sink on it has let its [`Mount`] go (after its flush), then stops
//! accepting and lets requests in flight finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use flowpulse_core::plugin::{BuildContext, BuildError};
use flowpulse_core::telemetry::Counter;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::auth::{ApiToken, TokenSource};
use super::error::{recover, ApiError};
use super::ServerOptions;

/// One route a sink serves: method and path, `{name}` standing for one
/// path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, e.g. `/api/v1/workflows/{id}/control`.
    pub path: String,
}

impl Route {
    /// A route of `method` at `path`.
    pub fn new(method: Method, path: impl Into<String>) -> Route {
        Route {
            method,
            path: path.into(),
        }
    }

    fn matches_path(&self, path: &str) -> bool {
        let mut want = self.path.trim_matches('/').split('/');
        let mut have = path.trim_matches('/').split('/');
        loop {
            match (want.next(), have.next()) {
                (None, None) => return true,
                (Some(w), Some(h)) if w.starts_with('{') || w == h => {}
                _ => return false,
            }
        }
    }
}

/// The servers of one pipeline, by address; kept in the pipeline's
/// [`Resources`](flowpulse_core::plugin::Resources).
#[derive(Clone, Default)]
pub struct HttpServers(Arc<Mutex<HashMap<String, Arc<SharedServer>>>>);

/// A server several sinks mount routes on.
pub struct SharedServer {
    address: String,
    local_addr: SocketAddr,
    token: ApiToken,
    inner: Mutex<Inner>,
    /// Cancelled when the last mount is let go: stop accepting.
    released: CancellationToken,
    /// Cancelled once the server has stopped (requests in flight answered).
    finished: CancellationToken,
}

struct Inner {
    filters: Vec<(String, BoxedFilter<(Response,)>)>,
    routes: Vec<(String, Route)>,
    mounts: usize,
}

/// A sink's hold on a server: the server stops once every hold is gone.
pub struct Mount {
    server: Arc<SharedServer>,
}

/// How long the last sink's flush waits for requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Mount {
    /// Lets the server go. The last hold waits (at most 10 s) until the
    /// server has stopped accepting and answered the requests in flight.
    pub async fn release(self) {
        let server = Arc::clone(&self.server);
        drop(self);
        if server.released.is_cancelled()
            && tokio::time::timeout(DRAIN_TIMEOUT, server.finished.cancelled())
                .await
                .is_err()
        {
            tracing::warn!(address = %server.local_addr, "requests still in flight after 10 s; closing anyway");
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mut inner = lock(&self.server.inner);
        inner.mounts = inner.mounts.saturating_sub(1);
        if inner.mounts == 0 {
            self.server.released.cancel();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl HttpServers {
    /// The pipeline's servers.
    pub fn of(cx: &BuildContext) -> HttpServers {
        cx.resources.get_or_insert_with(HttpServers::default)
    }

    /// The server at `options.address`, bound now if no sink has named it
    /// yet. Sinks sharing an address agree on its options (validation
    /// checks it), so the first one's are the server's.
    pub fn open(
        &self,
        cx: &BuildContext,
        options: &ServerOptions,
    ) -> Result<Arc<SharedServer>, BuildError> {
        let mut servers = lock(&self.0);
        if let Some(server) = servers.get(&options.address) {
            return Ok(Arc::clone(server));
        }
        let std_listener = std::net::TcpListener::bind(&options.address).map_err(|e| {
            BuildError(format!(
                "cannot listen on {}: {e}{}",
                options.address,
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    "; another program (or another sink with other options) holds the port"
                } else {
                    ""
                }
            ))
        })?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (token, source) = ApiToken::resolve(options.token.as_deref(), &cx.pipeline.data_dir)
            .map_err(|e| BuildError(format!("`token`: {e}")))?;
        show_token(&token, &source, local_addr);
        tracing::info!(component = %cx.name, address = %local_addr, "listening");
        let server = Arc::new(SharedServer {
            address: options.address.clone(),
            local_addr,
            token,
            inner: Mutex::new(Inner {
                filters: Vec::new(),
                routes: Vec::new(),
                mounts: 0,
            }),
            released: CancellationToken::new(),
            finished: CancellationToken::new(),
        });
        let counters = Counters {
            answered: cx.stats.counter(
                "http_requests",
                "HTTP requests answered by the server this sink opened.",
            ),
            refused: cx.stats.counter(
                "http_requests_refused",
                "HTTP requests refused as bad input (4xx), by the server this sink opened.",
            ),
            failed: cx.stats.counter(
                "http_requests_failed",
                "HTTP requests that failed (5xx), by the server this sink opened.",
            ),
        };
        tokio::spawn(serve(
            Arc::clone(&server),
            listener,
            options.cors_origins.clone(),
            counters,
            cx.serving(),
        ));
        servers.insert(options.address.clone(), Arc::clone(&server));
        Ok(server)
    }
}

/// Shows the token once, on standard error, outside the log (which may be
/// shipped elsewhere). A token from the config is the operator's own and
/// is not repeated.
fn show_token(token: &ApiToken, source: &TokenSource, address: SocketAddr) {
    let from = match source {
        TokenSource::Config => return,
        TokenSource::File(path) => format!("read from {}", path.display()),
        TokenSource::Generated(path) => format!("generated into {}", path.display()),
    };
    eprintln!(
        "API token for http://{address} ({from}; send it as `Authorization: Bearer <TOKEN>`):\n  {}",
        token.reveal()
    );
}

impl SharedServer {
    /// The address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The token this server checks.
    pub fn token(&self) -> &ApiToken {
        &self.token
    }

    /// Mounts `filter`, which serves `routes`, for the sink `owner`.
    pub fn mount(
        self: &Arc<Self>,
        owner: &str,
        routes: Vec<Route>,
        filter: BoxedFilter<(Response,)>,
    ) -> Mount {
        let mut inner = lock(&self.inner);
        inner.filters.push((owner.to_owned(), filter));
        inner
            .routes
            .extend(routes.into_iter().map(|r| (owner.to_owned(), r)));
        inner.mounts += 1;
        Mount {
            server: Arc::clone(self),
        }
    }

    /// Every route mounted so far.
    pub fn routes(&self) -> Vec<Route> {
        lock(&self.inner)
            .routes
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// What a server counts, in the telemetry of the sink that opened it.
struct Counters {
    answered: Arc<Counter>,
    refused: Arc<Counter>,
    failed: Arc<Counter>,
}

/// Waits for every sink to be built (so every filter is mounted), then
/// serves them until the last mount is let go.
async fn serve(
    server: Arc<SharedServer>,
    listener: tokio::net::TcpListener,
    cors_origins: Vec<String>,
    counters: Counters,
    mounted: impl std::future::Future<Output = ()>,
) {
    // However this ends, the last mount's release stops waiting.
    let _finished = server.finished.clone().drop_guard();
    tokio::select! {
        () = mounted => {}
        () = server.released.cancelled() => return,
    }
    let (filters, routes) = {
        let inner = lock(&server.inner);
        let filters: Vec<_> = inner.filters.iter().map(|(_, f)| f.clone()).collect();
        let routes: Vec<Route> = inner.routes.iter().map(|(_, r)| r.clone()).collect();
        (filters, routes)
    };
    let mut app = fallback(Arc::new(routes));
    for filter in filters.into_iter().rev() {
        app = filter.or(app).unify().boxed();
    }
    let cors = Arc::new(cors_origins);
    let app = preflight(Arc::clone(&cors)).or(app).unify();
    let count = warp::log::custom(move |info| {
        counters.answered.inc();
        if info.status().is_client_error() {
            counters.refused.inc();
        } else if info.status().is_server_error() {
            counters.failed.inc();
        }
    });
    let app = warp::header::optional::<String>("origin")
        .and(app.recover(recover).map(warp::Reply::into_response))
        .map(move |origin: Option<String>, response: Response| {
            allow_origin(response, origin.as_deref(), &cors)
        })
        .with(count);
    let released = server.released.clone();
    warp::serve(app)
        .incoming(listener)
        .graceful(async move { released.cancelled().await })
        .run()
        .await;
    tracing::debug!(address = %server.local_addr, "server stopped");
}

/// The CORS headers every request from an allowed origin needs.
const CORS_METHODS: &str = "GET, HEAD, POST, PUT, DELETE";
const CORS_HEADERS: &str = "authorization, content-type, idempotency-key, x-requested-by";

/// Whether `origin` is one of `cors_origins`. A request without `Origin`,
/// or from the server's own origin, needs no CORS at all: browsers send
/// it as same-origin and it is served like any other.
fn allowed_origin(origin: Option<&str>, cors_origins: &[String]) -> bool {
    origin.is_some_and(|o| cors_origins.iter().any(|allowed| allowed == o))
}

/// Answers a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`)
/// from an allowed origin with 204; any other `OPTIONS` goes on (and gets
/// the 405 of its path), so a browser on another origin is refused.
fn preflight(cors_origins: Arc<Vec<String>>) -> BoxedFilter<(Response,)> {
    warp::options()
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>(
            "access-control-request-method",
        ))
        .and_then(move |origin: Option<String>, method: Option<String>| {
            let allowed = method.is_some() && allowed_origin(origin.as_deref(), &cors_origins);
            async move {
                if !allowed {
                    return Err(warp::reject::not_found());
                }
                let mut response = Response::new(warp::hyper::body::Bytes::new().into());
                *response.status_mut() = StatusCode::NO_CONTENT;
                let headers = response.headers_mut();
                headers.insert(
                    "access-control-allow-methods",
                    warp::http::HeaderValue::from_static(CORS_METHODS),
                );
                headers.insert(
                    "access-control-allow-headers",
                    warp::http::HeaderValue::from_static(CORS_HEADERS),
                );
                headers.insert(
                    "access-control-max-age",
                    warp::http::HeaderValue::from_static("600"),
                );
                Ok(response)
            }
        })
        .boxed()
}

/// Adds `Access-Control-Allow-Origin` (and `Vary: Origin`) to an answer
/// to an allowed origin.
fn allow_origin(mut response: Response, origin: Option<&str>, cors_origins: &[String]) -> Response {
    if let (true, Some(origin)) = (allowed_origin(origin, cors_origins), origin) {
        if let Ok(value) = warp::http::HeaderValue::from_str(origin) {
            let headers = response.headers_mut();
            headers.insert("access-control-allow-origin", value);
            headers.insert("vary", warp::http::HeaderValue::from_static("origin"));
        }
    }
    response
}

/// The last filter: a path no route has is 404, a method its path does
/// not take is 405 with `Allow`. A request some route takes but whose
/// filter rejected it (a bad body, a missing token) is left to that
/// rejection.
fn fallback(routes: Arc<Vec<Route>>) -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::path::full())
        .and_then(move |method: Method, path: warp::path::FullPath| {
            let routes = Arc::clone(&routes);
            async move {
                let on_path: Vec<&Route> = routes
                    .iter()
                    .filter(|r| r.matches_path(path.as_str()))
                    .collect();
                if on_path.is_empty() {
                    return Ok(
                        ApiError::not_found(format!("no route {}", path.as_str())).response()
                    );
                }
                let takes = |r: &&Route| {
                    r.method == method || (method == Method::HEAD && r.method == Method::GET)
                };
                if on_path.iter().any(takes) {
                    return Err(warp::reject::not_found());
                }
                let mut allow: Vec<&str> = on_path
                    .iter()
                    .flat_map(|r| {
                        let head = (r.method == Method::GET).then_some("HEAD");
                        std::iter::once(r.method.as_str()).chain(head)
                    })
                    .collect();
                allow.sort_unstable();
                allow.dedup();
                let allow = allow.join(", ");
                Ok(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} takes {allow}", path.as_str()),
                )
                .header("allow", allow)
                .response())
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_get_cors_headers() {
        let origins = vec!["https://ops.example.com".to_owned()];
        let allowed = allow_origin(
            Response::default(),
            Some("https://ops.example.com"),
            &origins,
        );
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "https://ops.example.com"
        );
        let other = allow_origin(Response::default(), Some("https://evil.example"), &origins);
        assert!(other.headers().get("access-control-allow-origin").is_none());
        let same_origin = allow_origin(Response::default(), None, &origins);
        assert!(same_origin
            .headers()
            .get("access-control-allow-origin")
            .is_none());
    }

    #[test]
    fn a_route_pattern_matches_one_segment_per_placeholder() {
        let route = Route::new(Method::POST, "/api/v1/workflows/{id}/control");
        assert!(route.matches_path("/api/v1/workflows/wf-1/control"));
        assert!(!route.matches_path("/api/v1/workflows/wf-1/x/control"));
        assert!(!route.matches_path("/api/v1/workflows/control"));
        assert!(Route::new(Method::GET, "/metrics").matches_path("/metrics"));
        assert!(!Route::new(Method::GET, "/metrics").matches_path("/metrics/x"));
    }
}
