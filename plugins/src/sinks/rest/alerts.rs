//! The alert routes of the `rest` sink (CONTRACT §4), served from its
//! `store`: list, one alert with its history, acknowledge, resolve.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use flowpulse_core::alert::{Alert, AlertStatus};
use flowpulse_core::event::{format_rfc3339_ms, parse_rfc3339_ms};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::config::{RestConfig, PREFIX};
use super::routes::{store_unavailable, ErrorBody, RestState};
use crate::http::error::json_response;
use crate::http::{
    authorize, get_or_head, guarded, json_body, requested_by, Access, ApiError, Route,
};
use crate::stores::alerts::{self, AlertChange, AlertFilter, ChangeOutcome};

/// The alert routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, format!("{PREFIX}/alerts")),
        Route::new(Method::GET, format!("{PREFIX}/alerts/{{id}}")),
        Route::new(Method::POST, format!("{PREFIX}/alerts/{{id}}/acknowledge")),
        Route::new(Method::POST, format!("{PREFIX}/alerts/{{id}}/resolve")),
    ]
}

/// Their filter.
pub fn filter(state: Arc<RestState>, config: &RestConfig) -> BoxedFilter<(Response,)> {
    let server = Arc::clone(&state.server);
    let read = authorize(&server, Access::Read, config.auth_reads);
    let token = authorize(&server, Access::Token, config.auth_reads);
    let with_state = warp::any().map(move || Arc::clone(&state)).boxed();
    let list_route = warp::path!("api" / "v1" / "monitoring" / "alerts")
        .and(get_or_head())
        .and(read.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(with_state.clone())
        .and_then(|query: String, state: Arc<RestState>| guarded(list(state, query)));
    let one_route = warp::path!("api" / "v1" / "monitoring" / "alerts" / String)
        .and(get_or_head())
        .and(read)
        .and(with_state.clone())
        .and_then(|id: String, state: Arc<RestState>| guarded(one(state, id)));
    let acknowledge_route =
        warp::path!("api" / "v1" / "monitoring" / "alerts" / String / "acknowledge")
            .and(warp::post())
            .and(token.clone())
            .and(requested_by())
            .and(json_body::<AcknowledgeRequest>(config.max_body))
            .and(with_state.clone())
            .and_then(
                |id: String, actor: String, body: AcknowledgeRequest, state: Arc<RestState>| {
                    guarded(acknowledge(state, id, actor, body))
                },
            );
    let resolve_route = warp::path!("api" / "v1" / "monitoring" / "alerts" / String / "resolve")
        .and(warp::post())
        .and(token)
        .and(requested_by())
        .and(json_body::<ResolveRequest>(config.max_body))
        .and(with_state)
        .and_then(
            |id: String, actor: String, body: ResolveRequest, state: Arc<RestState>| {
                guarded(resolve(state, id, actor, body))
            },
        );
    list_route
        .or(one_route)
        .unify()
        .or(acknowledge_route)
        .unify()
        .or(resolve_route)
        .unify()
        .boxed()
}

/// `GET M/alerts`.
#[derive(Serialize, ToSchema)]
pub struct AlertList {
    /// Alerts, newest first.
    pub data: Vec<Alert>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

fn cursor_of(created_at: &str, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"))
}

fn parse_cursor(cursor: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::invalid_parameter("cursor", "not a cursor this server gave");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((at.to_owned(), id.to_owned()))
}

fn time_parameter(name: &str, value: &str) -> Result<String, ApiError> {
    parse_rfc3339_ms(value)
        .map(format_rfc3339_ms)
        .ok_or_else(|| {
            ApiError::invalid_parameter(name, format!("`{value}` is not an RFC 3339 time"))
        })
}

/// The filter of `GET M/alerts` from its query string.
fn alert_filter(query: &str) -> Result<AlertFilter, ApiError> {
    let pairs: HashMap<String, String> = serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::invalid_parameter("query", "the query string cannot be read"))?;
    let mut filter = AlertFilter {
        limit: 50,
        ..AlertFilter::default()
    };
    for (key, value) in pairs {
        match key.as_str() {
            "status" => {
                let statuses: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = statuses
                    .iter()
                    .find(|s| !["triggered", "acknowledged", "resolved"].contains(&s.as_str()))
                {
                    return Err(ApiError::invalid_parameter(
                        "status",
                        format!("`{bad}` is not triggered, acknowledged or resolved"),
                    ));
                }
                filter.statuses = Some(statuses);
            }
            "severity" => {
                if !["critical", "warning", "info"].contains(&value.as_str()) {
                    return Err(ApiError::invalid_parameter(
                        "severity",
                        "must be critical, warning or info",
                    ));
                }
                filter.severity = Some(value);
            }
            "rule_id" => filter.rule_id = Some(value),
            "instance" => filter.instance = Some(value),
            "since" => filter.since = Some(time_parameter("since", &value)?),
            "until" => filter.until = Some(time_parameter("until", &value)?),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=500).contains(n))
                    .ok_or_else(|| ApiError::invalid_parameter("limit", "must be 1 to 500"))?;
            }
            "cursor" => filter.after = Some(parse_cursor(&value)?),
            other => {
                return Err(ApiError::invalid_parameter(
                    other,
                    format!("`{other}` is not a parameter of this route; it takes status, severity, rule_id, instance, since, until, limit, cursor"),
                ))
            }
        }
    }
    Ok(filter)
}

/// Alerts, newest first.
#[utoipa::path(get, path = "/api/v1/monitoring/alerts", operation_id = "list_alerts", tag = "alerts",
    params(
        ("status" = Option<String>, Query, description = "Comma list of triggered, acknowledged, resolved"),
        ("severity" = Option<String>, Query, description = "critical, warning or info"),
        ("rule_id" = Option<String>, Query, description = "One rule's alerts"),
        ("instance" = Option<String>, Query, description = "One instance's alerts"),
        ("since" = Option<String>, Query, description = "created_at at or after (RFC 3339)"),
        ("until" = Option<String>, Query, description = "created_at before (RFC 3339)"),
        ("limit" = Option<u32>, Query, description = "1–500, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of alerts", body = AlertList),
        (status = 400, description = "`invalid_parameter`", body = ErrorBody),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn list(state: Arc<RestState>, query: String) -> Result<Response, ApiError> {
    let store = state.store_for("alerts")?;
    let filter = alert_filter(&query)?;
    let (alerts, next) = alerts::list(store, &filter)
        .await
        .map_err(|e| store_unavailable(store, e))?;
    Ok(json_response(
        StatusCode::OK,
        &AlertList {
            data: alerts,
            next_cursor: next.map(|(at, id)| cursor_of(&at, &id)),
        },
    ))
}

/// An alert with its history.
#[derive(Serialize, ToSchema)]
pub struct AlertWithHistory {
    /// The alert.
    #[serde(flatten)]
    pub alert: Alert,
    /// Every change, oldest first.
    pub history: Vec<AlertChange>,
}

/// `GET M/alerts/{id}`.
#[derive(Serialize, ToSchema)]
pub struct AlertWithHistoryAnswer {
    /// The alert and its history.
    pub data: AlertWithHistory,
}

/// `POST M/alerts/{id}/…`.
#[derive(Serialize, ToSchema)]
pub struct AlertAnswer {
    /// The alert after the change.
    pub data: Alert,
}

/// One alert with its history.
#[utoipa::path(get, path = "/api/v1/monitoring/alerts/{id}", operation_id = "get_alert", tag = "alerts",
    params(("id" = String, Path, description = "The alert's id")),
    responses(
        (status = 200, description = "The alert and its history", body = AlertWithHistoryAnswer),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn one(state: Arc<RestState>, id: String) -> Result<Response, ApiError> {
    let store = state.store_for("alerts")?;
    let alert = alerts::fetch(store, &id)
        .await
        .map_err(|e| store_unavailable(store, e))?
        .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
    let history = alerts::history(store, &id)
        .await
        .map_err(|e| store_unavailable(store, e))?;
    Ok(json_response(
        StatusCode::OK,
        &AlertWithHistoryAnswer {
            data: AlertWithHistory { alert, history },
        },
    ))
}

/// The body of an acknowledgement.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeRequest {
    /// Kept in the alert's history.
    #[serde(default)]
    pub comment: Option<String>,
    /// RFC 3339: past it, an alert still firing is notified again.
    #[serde(default)]
    pub until: Option<String>,
}

/// The body of a resolve.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Kept in the alert's history.
    #[serde(default)]
    pub comment: Option<String>,
}

fn check_comment(comment: Option<&str>) -> Result<(), ApiError> {
    if comment.is_some_and(|c| c.chars().count() > 1000) {
        return Err(ApiError::invalid_parameter(
            "comment",
            "at most 1,000 characters",
        ));
    }
    Ok(())
}

fn answer(outcome: ChangeOutcome, id: &str) -> Result<Response, ApiError> {
    match outcome {
        ChangeOutcome::Done(alert) => {
            Ok(json_response(StatusCode::OK, &AlertAnswer { data: alert }))
        }
        ChangeOutcome::NotFound => Err(ApiError::not_found(format!("no alert {id}"))),
        ChangeOutcome::Resolved(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "alert_resolved",
            format!("alert {id} is resolved, which is final"),
        )),
    }
}

/// Acknowledges an alert: notifications about it stop until `until` (or
/// until it resolves). Acknowledging again changes nothing.
#[utoipa::path(post, path = "/api/v1/monitoring/alerts/{id}/acknowledge", operation_id = "acknowledge_alert", tag = "alerts",
    params(("id" = String, Path, description = "The alert's id"),
           ("X-Requested-By" = Option<String>, Header, description = "Recorded as `api:NAME`")),
    request_body = AcknowledgeRequest,
    responses(
        (status = 200, description = "The alert, acknowledged", body = AlertAnswer),
        (status = 400, description = "`invalid_json` or `invalid_parameter`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 409, description = "`alert_resolved`", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn acknowledge(
    state: Arc<RestState>,
    id: String,
    actor: String,
    body: AcknowledgeRequest,
) -> Result<Response, ApiError> {
    let store = state.store_for("alerts")?;
    check_comment(body.comment.as_deref())?;
    let until = body
        .until
        .as_deref()
        .map(|u| time_parameter("until", u))
        .transpose()?;
    let outcome = alerts::change(
        store,
        &id,
        AlertStatus::Acknowledged,
        &actor,
        body.comment.as_deref(),
        until.as_deref(),
    )
    .await
    .map_err(|e| store_unavailable(store, e))?;
    answer(outcome, &id)
}

/// Resolves an alert by hand: it fires again only after its condition has
/// cleared once.
#[utoipa::path(post, path = "/api/v1/monitoring/alerts/{id}/resolve", operation_id = "resolve_alert", tag = "alerts",
    params(("id" = String, Path, description = "The alert's id"),
           ("X-Requested-By" = Option<String>, Header, description = "Recorded as `api:NAME`")),
    request_body = ResolveRequest,
    responses(
        (status = 200, description = "The alert, resolved", body = AlertAnswer),
        (status = 400, description = "`invalid_json` or `invalid_parameter`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 409, description = "`alert_resolved`", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn resolve(
    state: Arc<RestState>,
    id: String,
    actor: String,
    body: ResolveRequest,
) -> Result<Response, ApiError> {
    let store = state.store_for("alerts")?;
    check_comment(body.comment.as_deref())?;
    let outcome = alerts::change(
        store,
        &id,
        AlertStatus::Resolved,
        &actor,
        body.comment.as_deref(),
        None,
    )
    .await
    .map_err(|e| store_unavailable(store, e))?;
    answer(outcome, &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_checked_parameter_by_parameter() {
        let f = alert_filter("status=triggered,acknowledged&severity=critical&limit=10").unwrap();
        assert_eq!(f.statuses.unwrap(), ["triggered", "acknowledged"]);
        assert_eq!(f.limit, 10);
        let field = |q: &str| alert_filter(q).unwrap_err().field.unwrap();
        assert_eq!(field("status=open"), "status");
        assert_eq!(field("limit=0"), "limit");
        assert_eq!(field("limit=501"), "limit");
        assert_eq!(field("since=yesterday"), "since");
        assert_eq!(field("colour=red"), "colour");
        assert_eq!(field("cursor=%%%"), "cursor");
    }

    #[test]
    fn a_cursor_goes_round() {
        let c = cursor_of("2026-11-30T10:00:00.000Z", "abc");
        assert_eq!(
            parse_cursor(&c).unwrap(),
            ("2026-11-30T10:00:00.000Z".into(), "abc".into())
        );
    }
}
