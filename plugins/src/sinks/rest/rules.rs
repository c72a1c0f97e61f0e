//! The rule routes of the `rest` sink (CONTRACT §4 Rule), served from its
//! `store`: list, read, create (or dry-run), replace, delete, mute.

use std::collections::HashMap;
use std::sync::Arc;

use flowpulse_core::event::{format_rfc3339_ms, parse_rfc3339_ms};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::config::{RestConfig, PREFIX};
use super::routes::{store_unavailable, ErrorBody, RestState};
use crate::http::error::json_response;
use crate::http::{
    authorize, get_or_head, guarded, json_body, json_body_as, Access, ApiError, Route,
};
use crate::processors::alert_rules::evaluator::CompiledRule;
use crate::processors::alert_rules::path::SelfSample;
use crate::processors::alert_rules::rule::{Rule, RuleSource};
use crate::stores::rules::{self, RuleWriteError};
use crate::stores::Store;

/// The rule routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, format!("{PREFIX}/rules")),
        Route::new(Method::POST, format!("{PREFIX}/rules")),
        Route::new(Method::GET, format!("{PREFIX}/rules/{{id}}")),
        Route::new(Method::PUT, format!("{PREFIX}/rules/{{id}}")),
        Route::new(Method::DELETE, format!("{PREFIX}/rules/{{id}}")),
        Route::new(Method::POST, format!("{PREFIX}/rules/{{id}}/mute")),
        Route::new(Method::DELETE, format!("{PREFIX}/rules/{{id}}/mute")),
    ]
}

type Handler = BoxedFilter<(Response,)>;

/// Their filter.
pub fn filter(state: Arc<RestState>, config: &RestConfig) -> Handler {
    let server = Arc::clone(&state.server);
    let read = authorize(&server, Access::Read, config.auth_reads);
    let token = authorize(&server, Access::Token, config.auth_reads);
    let with_state = warp::any().map(move || Arc::clone(&state)).boxed();
    let query = || warp::query::raw().or(warp::any().map(String::new)).unify();
    let max = config.max_body;
    let list_route = warp::path!("api" / "v1" / "monitoring" / "rules")
        .and(get_or_head())
        .and(read.clone())
        .and(query())
        .and(with_state.clone())
        .and_then(|q: String, s: Arc<RestState>| guarded(list(s, q)));
    let create_route = warp::path!("api" / "v1" / "monitoring" / "rules")
        .and(warp::post())
        .and(token.clone())
        .and(query())
        .and(json_body_as::<Rule>(max, "invalid_rule"))
        .and(with_state.clone())
        .and_then(|q: String, rule: Rule, s: Arc<RestState>| guarded(create(s, q, rule)));
    let one_route = warp::path!("api" / "v1" / "monitoring" / "rules" / String)
        .and(get_or_head())
        .and(read)
        .and(with_state.clone())
        .and_then(|id: String, s: Arc<RestState>| guarded(one(s, id)));
    let replace_route = warp::path!("api" / "v1" / "monitoring" / "rules" / String)
        .and(warp::put())
        .and(token.clone())
        .and(json_body_as::<Rule>(max, "invalid_rule"))
        .and(with_state.clone())
        .and_then(|id: String, rule: Rule, s: Arc<RestState>| guarded(replace(s, id, rule)));
    let delete_route = warp::path!("api" / "v1" / "monitoring" / "rules" / String)
        .and(warp::delete())
        .and(token.clone())
        .and(with_state.clone())
        .and_then(|id: String, s: Arc<RestState>| guarded(remove(s, id)));
    let mute_route = warp::path!("api" / "v1" / "monitoring" / "rules" / String / "mute")
        .and(warp::post())
        .and(token.clone())
        .and(json_body::<MuteRequest>(max))
        .and(with_state.clone())
        .and_then(|id: String, body: MuteRequest, s: Arc<RestState>| guarded(mute(s, id, body)));
    let unmute_route = warp::path!("api" / "v1" / "monitoring" / "rules" / String / "mute")
        .and(warp::delete())
        .and(token)
        .and(with_state)
        .and_then(|id: String, s: Arc<RestState>| guarded(unmute(s, id)));
    list_route
        .or(create_route)
        .unify()
        .or(one_route)
        .unify()
        .or(replace_route)
        .unify()
        .or(delete_route)
        .unify()
        .or(mute_route)
        .unify()
        .or(unmute_route)
        .unify()
        .boxed()
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no rule {id}"))
}

fn write_error(store: &Store, e: RuleWriteError) -> ApiError {
    match e {
        RuleWriteError::DuplicateName(name) => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_name",
            format!("a rule called `{name}` exists already"),
        )
        .field("name"),
        RuleWriteError::Database(e) => store_unavailable(store, e),
    }
}

/// A list of rules.
#[derive(Serialize, ToSchema)]
pub struct RuleList {
    /// Rules by name.
    pub data: Vec<Rule>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// One rule.
#[derive(Serialize, ToSchema)]
pub struct RuleAnswer {
    /// The rule.
    pub data: Rule,
}

/// What a rule would fire for now.
#[derive(Serialize, ToSchema)]
pub struct DryRun {
    /// The rule as it would be stored.
    pub rule: Rule,
    /// Instances whose value meets the condition in the newest document
    /// (`duration_ms` ignored).
    pub would_fire: Vec<WouldFire>,
}

/// One instance a dry run would fire for.
#[derive(Serialize, ToSchema)]
pub struct WouldFire {
    /// The instance (`""` for a rule without `*`).
    pub instance: String,
    /// Its value.
    pub value: Option<f64>,
}

/// The answer of a dry run.
#[derive(Serialize, ToSchema)]
pub struct DryRunAnswer {
    /// The rule and what it would fire for.
    pub data: DryRun,
}

/// The body of a mute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    /// RFC 3339: until then notification sinks skip its alerts.
    pub until: String,
    /// Why, for people.
    #[serde(default)]
    pub comment: Option<String>,
}

fn query_pairs(query: &str) -> Result<HashMap<String, String>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::invalid_parameter("query", "the query string cannot be read"))
}

/// A rule as a person sent it, checked: 400 `invalid_rule` naming the first
/// field that is wrong.
fn checked(mut rule: Rule, channels: &[String]) -> Result<Rule, ApiError> {
    if let Some(problem) = rule.problems(channels).into_iter().next() {
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_rule", problem.message)
                .field(problem.field),
        );
    }
    if let Some(until) = &rule.muted_until {
        rule.muted_until = parse_rfc3339_ms(until).map(format_rfc3339_ms);
    }
    Ok(rule)
}

/// Rules by name.
#[utoipa::path(get, path = "/api/v1/monitoring/rules", operation_id = "list_rules", tag = "rules",
    params(
        ("enabled" = Option<bool>, Query, description = "true or false"),
        ("severity" = Option<String>, Query, description = "critical, warning or info"),
        ("source" = Option<String>, Query, description = "config or api"),
        ("limit" = Option<u32>, Query, description = "1–500, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "Every rule", body = RuleList),
        (status = 400, description = "`invalid_parameter`", body = ErrorBody),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn list(state: Arc<RestState>, query: String) -> Result<Response, ApiError> {
    let store = state.store_for("rules")?;
    let mut enabled = None;
    let mut severity = None;
    let mut source = None;
    let mut limit = 50usize;
    let mut after: Option<String> = None;
    for (key, value) in query_pairs(&query)? {
        match key.as_str() {
            "enabled" => {
                enabled = Some(value.parse::<bool>().map_err(|_| {
                    ApiError::invalid_parameter("enabled", "must be true or false")
                })?)
            }
            "severity" if ["critical", "warning", "info"].contains(&value.as_str()) => {
                severity = Some(value)
            }
            "severity" => {
                return Err(ApiError::invalid_parameter("severity", "must be critical, warning or info"))
            }
            "source" if ["config", "api"].contains(&value.as_str()) => source = Some(value),
            "source" => return Err(ApiError::invalid_parameter("source", "must be config or api")),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=500).contains(n))
                    .ok_or_else(|| ApiError::invalid_parameter("limit", "must be 1 to 500"))?
            }
            // The cursor is the name of the last rule of the previous page
            // (rules come by name), in base64url.
            "cursor" => {
                let bad = || ApiError::invalid_parameter("cursor", "not a cursor this server gave");
                let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &value)
                    .map_err(|_| bad())?;
                after = Some(String::from_utf8(bytes).map_err(|_| bad())?);
            }
            other => {
                return Err(ApiError::invalid_parameter(
                    other,
                    format!("`{other}` is not a parameter of this route; it takes enabled, severity, source, limit, cursor"),
                ))
            }
        }
    }
    let (all, _) = rules::load(store)
        .await
        .map_err(|e| store_unavailable(store, e))?;
    let mut data: Vec<Rule> = all
        .into_iter()
        .filter(|r| enabled.is_none_or(|e| r.enabled == e))
        .filter(|r| severity.as_deref().is_none_or(|s| r.severity.as_str() == s))
        .filter(|r| {
            source.as_deref().is_none_or(|s| {
                matches!(
                    (s, r.source),
                    ("config", Some(RuleSource::Config)) | ("api", Some(RuleSource::Api))
                )
            })
        })
        .filter(|r| after.as_deref().is_none_or(|a| r.name.as_str() > a))
        .collect();
    let more = data.len() > limit;
    data.truncate(limit);
    let next_cursor = more.then(|| data.last()).flatten().map(|r| {
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &r.name)
    });
    Ok(json_response(
        StatusCode::OK,
        &RuleList { data, next_cursor },
    ))
}

/// Creates a rule, or with `?dry_run=true` says what it would fire for now.
#[utoipa::path(post, path = "/api/v1/monitoring/rules", operation_id = "create_rule", tag = "rules",
    params(("dry_run" = Option<bool>, Query, description = "Check against the newest document; store nothing")),
    request_body = Rule,
    responses(
        (status = 201, description = "Created; `Location` names it", body = RuleAnswer),
        (status = 200, description = "The dry run", body = DryRunAnswer),
        (status = 400, description = "`invalid_rule` (with `field`), `invalid_json` or `invalid_parameter`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 409, description = "`duplicate_name`", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured`, `store_unavailable` or (dry run) `metrics_unavailable`", body = ErrorBody),
    ))]
pub async fn create(
    state: Arc<RestState>,
    query: String,
    rule: Rule,
) -> Result<Response, ApiError> {
    let mut dry_run = false;
    for (key, value) in query_pairs(&query)? {
        match key.as_str() {
            "dry_run" => {
                dry_run = value
                    .parse()
                    .map_err(|_| ApiError::invalid_parameter("dry_run", "must be true or false"))?
            }
            other => {
                return Err(ApiError::invalid_parameter(
                    other,
                    format!("`{other}` is not a parameter of this route"),
                ))
            }
        }
    }
    let mut rule = checked(rule, &state.channels)?;
    rule.id = Some(uuid::Uuid::new_v4().to_string());
    rule.source = Some(RuleSource::Api);
    if dry_run {
        let latest = state.latest_document().ok_or_else(|| {
            ApiError::unavailable(
                "metrics_unavailable",
                "no metrics document yet to check the rule against",
            )
        })?;
        let compiled = CompiledRule::new(rule.clone()).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_rule", e).field("condition.metric")
        })?;
        let condition = &rule.condition;
        let would_fire = compiled
            .path
            .read(&latest, &SelfSample::default())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| {
                s.value
                    .is_some_and(|v| condition.operator.holds(v, condition.value))
            })
            .map(|s| WouldFire {
                instance: s.instance.to_owned(),
                value: s.value,
            })
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            &DryRunAnswer {
                data: DryRun { rule, would_fire },
            },
        ));
    }
    let store = state.store_for("rules")?;
    rules::upsert(store, &rule, RuleSource::Api, false)
        .await
        .map_err(|e| write_error(store, e))?;
    let id = rule.id.clone().unwrap_or_default();
    let stored = fetch_rule(store, &id).await?;
    let mut response = json_response(StatusCode::CREATED, &RuleAnswer { data: stored });
    if let Ok(location) = HeaderValue::from_str(&format!("{PREFIX}/rules/{id}")) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

async fn fetch_rule(store: &Store, id: &str) -> Result<Rule, ApiError> {
    match rules::fetch(store, id)
        .await
        .map_err(|e| store_unavailable(store, e))?
    {
        Some(Ok(rule)) => Ok(rule),
        Some(Err(bad)) => {
            Err(ApiError::internal().field(format!("rule {}: {}", bad.name, bad.problem)))
        }
        None => Err(not_found(id)),
    }
}

/// One rule.
#[utoipa::path(get, path = "/api/v1/monitoring/rules/{id}", operation_id = "get_rule", tag = "rules",
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The rule", body = RuleAnswer),
        (status = 401, description = "`auth_reads = true` and no valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn one(state: Arc<RestState>, id: String) -> Result<Response, ApiError> {
    let store = state.store_for("rules")?;
    let rule = fetch_rule(store, &id).await?;
    Ok(json_response(StatusCode::OK, &RuleAnswer { data: rule }))
}

/// Replaces a rule made over the API (config rules change only in the file).
#[utoipa::path(put, path = "/api/v1/monitoring/rules/{id}", operation_id = "replace_rule", tag = "rules",
    params(("id" = String, Path, description = "The rule's id")),
    request_body = Rule,
    responses(
        (status = 200, description = "The rule now", body = RuleAnswer),
        (status = 400, description = "`invalid_rule` (with `field`) or `invalid_json`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 409, description = "`config_rule` or `duplicate_name`", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn replace(state: Arc<RestState>, id: String, rule: Rule) -> Result<Response, ApiError> {
    let store = state.store_for("rules")?;
    let current = fetch_rule(store, &id).await?;
    if current.source == Some(RuleSource::Config) {
        return Err(config_rule(&id));
    }
    let mut rule = checked(rule, &state.channels)?;
    rule.id = Some(id.clone());
    rules::upsert(store, &rule, RuleSource::Api, false)
        .await
        .map_err(|e| write_error(store, e))?;
    let stored = fetch_rule(store, &id).await?;
    Ok(json_response(StatusCode::OK, &RuleAnswer { data: stored }))
}

fn config_rule(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "config_rule",
        format!("rule {id} comes from the config file, and changes only there"),
    )
}

/// Deletes a rule made over the API that has no open alerts.
#[utoipa::path(delete, path = "/api/v1/monitoring/rules/{id}", operation_id = "delete_rule", tag = "rules",
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 409, description = "`config_rule` or `rule_has_open_alerts`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn remove(state: Arc<RestState>, id: String) -> Result<Response, ApiError> {
    let store = state.store_for("rules")?;
    let current = fetch_rule(store, &id).await?;
    if current.source == Some(RuleSource::Config) {
        return Err(config_rule(&id));
    }
    if rules::has_open_alerts(store, &id)
        .await
        .map_err(|e| store_unavailable(store, e))?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rule_has_open_alerts",
            format!("rule {id} has open alerts: resolve them or disable the rule first"),
        ));
    }
    rules::delete(store, &id)
        .await
        .map_err(|e| store_unavailable(store, e))?;
    let mut response = Response::new(Vec::<u8>::new().into());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// Mutes a rule (config rules too): its alerts are still evaluated, stored
/// and shown, but notification sinks skip them until `until`.
#[utoipa::path(post, path = "/api/v1/monitoring/rules/{id}/mute", operation_id = "mute_rule", tag = "rules",
    params(("id" = String, Path, description = "The rule's id")),
    request_body = MuteRequest,
    responses(
        (status = 200, description = "The rule, muted", body = RuleAnswer),
        (status = 400, description = "`invalid_parameter` or `invalid_json`", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn mute(
    state: Arc<RestState>,
    id: String,
    body: MuteRequest,
) -> Result<Response, ApiError> {
    let store = state.store_for("rules")?;
    let until = parse_rfc3339_ms(&body.until)
        .map(format_rfc3339_ms)
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "until",
                format!("`{}` is not an RFC 3339 time", body.until),
            )
        })?;
    if rules::set_mute(store, &id, Some(&until))
        .await
        .map_err(|e| store_unavailable(store, e))?
        == 0
    {
        return Err(not_found(&id));
    }
    let rule = fetch_rule(store, &id).await?;
    Ok(json_response(StatusCode::OK, &RuleAnswer { data: rule }))
}

/// Unmutes a rule.
#[utoipa::path(delete, path = "/api/v1/monitoring/rules/{id}/mute", operation_id = "unmute_rule", tag = "rules",
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The rule, not muted", body = RuleAnswer),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`, with `Allow`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; the server log says more", body = ErrorBody),
        (status = 503, description = "`store_not_configured` or `store_unavailable`", body = ErrorBody),
    ))]
pub async fn unmute(state: Arc<RestState>, id: String) -> Result<Response, ApiError> {
    let store = state.store_for("rules")?;
    if rules::set_mute(store, &id, None)
        .await
        .map_err(|e| store_unavailable(store, e))?
        == 0
    {
        return Err(not_found(&id));
    }
    let rule = fetch_rule(store, &id).await?;
    Ok(json_response(StatusCode::OK, &RuleAnswer { data: rule }))
}
