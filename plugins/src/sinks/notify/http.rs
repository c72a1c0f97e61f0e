//! Posting a notification over HTTP, and sorting what comes back into
//! delivered, worth another attempt, or refused.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::retry::{parse_retry_after, DeliveryError};

/// The longest excerpt of a refusing answer kept in the outbox and logs.
const EXCERPT: usize = 200;

/// A client for one sink: its `timeout` on every attempt, and redirects
/// not followed (a 3xx is refused: a POST turned into a GET would count as
/// delivered, and a 307 would carry the body and secret headers to another
/// host). Proxies come from the environment (`HTTPS_PROXY`, `NO_PROXY`), as
/// usual.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("flowpulse/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// POSTs `body` (JSON) to `url` with `headers`. Connection errors,
/// timeouts, 5xx, 408 and 429 are worth another attempt (after the
/// answer's `Retry-After`, if any); another non-2xx answer is refused,
/// with its status and an excerpt. Messages never hold the URL, whose path
/// may be a secret.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<(), DeliveryError> {
    let response = client
        .post(url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| DeliveryError::Retry {
            reason: describe(&e),
            after: None,
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let text = response.text().await.unwrap_or_default();
    let reason = format!("HTTP {status}: {}", excerpt(&text));
    if retryable(status) {
        Err(DeliveryError::Retry { reason, after })
    } else {
        Err(DeliveryError::Refused { reason })
    }
}

/// 5xx, 408 and 429 may succeed later; other answers will not.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// What went wrong, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The first [`EXCERPT`] characters of `text`, on one line.
fn excerpt(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT)
        .collect();
    if text.chars().count() > EXCERPT {
        format!("{one_line}…")
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_answers_are_retried() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 413, 422, 301] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt("bad\nrequest"), "bad request");
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT + 1);
    }
}
