//! The dashboard: a page and its files (`dashboard/` beside this file),
//! compiled into the binary and served by a `rest` sink with
//! `dashboard = true` at `GET /` and `GET /assets/{file}`. The page uses
//! only the API of CONTRACT §3 and §4.

use std::sync::LazyLock;

use bytes::Bytes;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::http::error::ApiError;
use crate::http::{get_or_head, Route};

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// A strong validator: a hash of the content.
    etag: String,
}

macro_rules! asset {
    ($name:literal, $path:literal, $type:literal) => {
        ($name, $type, include_bytes!($path).as_slice())
    };
}

/// Every file, by name; `index.html` is `/`, the rest `/assets/NAME`.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        asset!(
            "index.html",
            "dashboard/index.html",
            "text/html; charset=utf-8"
        ),
        asset!(
            "style.css",
            "dashboard/assets/style.css",
            "text/css; charset=utf-8"
        ),
        asset!(
            "app.js",
            "dashboard/assets/app.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "api.js",
            "dashboard/assets/api.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "live.js",
            "dashboard/assets/live.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "charts.js",
            "dashboard/assets/charts.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "format.js",
            "dashboard/assets/format.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "panels.js",
            "dashboard/assets/panels.js",
            "text/javascript; charset=utf-8"
        ),
        asset!("icon.svg", "dashboard/assets/icon.svg", "image/svg+xml"),
        asset!(
            "errors.js",
            "dashboard/assets/errors.js",
            "text/javascript; charset=utf-8"
        ),
    ]
    .into_iter()
    .map(|(name, content_type, body)| Asset {
        name,
        content_type,
        body,
        etag: format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body)),
    })
    .collect()
});

/// The routes, for the server's 404/405 answers.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/"),
        Route::new(Method::GET, "/assets/{file}"),
    ]
}

/// `GET /` and `GET /assets/{file}`, open to all: the page holds no data;
/// what it shows comes from the API, with the API's own auth.
pub fn filter() -> BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .and(get_or_head())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|etag: Option<String>| serve("index.html", etag.as_deref()));
    let asset = warp::path!("assets" / String)
        .and(get_or_head())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|file: String, etag: Option<String>| {
            if file == "index.html" {
                return ApiError::not_found(format!("no asset `{file}`")).into_response();
            }
            serve(&file, etag.as_deref())
        });
    index.or(asset).unify().boxed()
}

/// The file `name` with its headers, or 304 when the client has it, or the
/// JSON 404.
fn serve(name: &str, if_none_match: Option<&str>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found(format!("no asset `{name}`")).into_response();
    };
    let fresh = if_none_match.is_some_and(|tags| {
        tags.split(',')
            .any(|t| t.trim().trim_start_matches("W/") == asset.etag || t.trim() == "*")
    });
    let mut response = if fresh {
        let mut r = Response::new(Bytes::new().into());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Bytes::from_static(asset.body).into());
        if let Ok(value) = HeaderValue::from_str(asset.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        r
    };
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ETAG, &asset.etag);
    // Revalidated on every load (a 304 when unchanged), so an upgrade is
    // seen at once.
    set(header::CACHE_CONTROL, "no-cache");
    set(header::CONTENT_SECURITY_POLICY, "default-src 'self'");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    // The page has buttons that change things: no other site may frame it.
    set(header::X_FRAME_OPTIONS, "DENY");
    response
}
