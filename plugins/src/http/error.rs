//! The one error body of CONTRACT §4, and the `recover` that turns every
//! rejection into it: nothing the server answers is HTML or plain text.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

/// An API error: status, a snake_case `code`, a message for people, and the
/// offending field or parameter where there is one.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `{"error": {"code": …}}`.
    pub code: &'static str,
    /// `{"error": {"message": …}}`: for people, never internals.
    pub message: String,
    /// `{"error": {"field": …}}`.
    pub field: Option<String>,
    /// Extra headers (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error of `status` with `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            headers: Vec::new(),
        }
    }

    /// Names the offending field or parameter.
    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// Adds a header to the answer.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    /// 400 `invalid_parameter` naming `field`.
    pub fn invalid_parameter(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).field(field)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401 `unauthorized` with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is needed: send `Authorization: Bearer <TOKEN>`",
        )
        .header("www-authenticate", "Bearer")
    }

    /// 500 `internal`: what went wrong is logged, not told.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log says more",
        )
    }

    /// 503 with `code`, naming the option to set where there is one.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// The answer.
    pub fn response(&self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = json_response(self.status, &body);
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().insert(*name, value);
            }
        }
        response
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        self.response()
    }
}

/// A JSON answer of `status`.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => {
            tracing::error!("cannot encode an answer: {e}");
            json_bytes(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error":{"code":"internal","message":"internal error; the server log says more"}}"#.to_vec(),
            )
        }
    }
}

/// An answer of `status` whose body is JSON already encoded.
pub fn json_bytes(status: StatusCode, bytes: impl Into<warp::hyper::body::Bytes>) -> Response {
    let bytes: warp::hyper::body::Bytes = bytes.into();
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// Every rejection as the §4 error body. Custom [`ApiError`]s keep their
/// own; warp's known rejections get their status and a code; anything else
/// is 500 `internal` (and logged).
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(api_error(&rejection).response())
}

fn api_error(rejection: &Rejection) -> ApiError {
    use warp::reject;
    if let Some(e) = rejection.find::<ApiError>() {
        return e.clone();
    }
    if rejection.is_not_found() {
        return ApiError::not_found("no such route");
    }
    if rejection.find::<reject::PayloadTooLarge>().is_some() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than this server's `max_body`",
        );
    }
    if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be `application/json`",
        );
    }
    if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string());
    }
    if rejection.find::<reject::InvalidQuery>().is_some() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "the query string cannot be read",
        );
    }
    if let Some(e) = rejection.find::<reject::MissingHeader>() {
        return ApiError::invalid_parameter(
            e.name(),
            format!("the header {} is missing", e.name()),
        );
    }
    if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        return ApiError::invalid_parameter(
            e.name(),
            format!("the header {} is not valid here", e.name()),
        );
    }
    if rejection.find::<reject::MethodNotAllowed>().is_some() {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here",
        );
    }
    if rejection
        .find::<warp::filters::ws::MissingConnectionUpgrade>()
        .is_some()
    {
        return ApiError::invalid_parameter("Upgrade", "this path takes WebSocket upgrades only");
    }
    tracing::error!("unhandled rejection: {rejection:?}");
    ApiError::internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn every_rejection_is_a_json_error_body() {
        let cases: Vec<(Rejection, u16, &str)> = vec![
            (warp::reject::not_found(), 404, "not_found"),
            (ApiError::unauthorized().into(), 401, "unauthorized"),
            (
                ApiError::invalid_parameter("limit", "1 to 500").into(),
                400,
                "invalid_parameter",
            ),
        ];
        for (rejection, status, code) in cases {
            let response = recover(rejection).await.unwrap();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = body_of(response).await;
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].is_string());
        }
    }

    #[tokio::test]
    async fn unauthorized_says_how_to_authenticate() {
        let response = recover(ApiError::unauthorized().into()).await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
}
