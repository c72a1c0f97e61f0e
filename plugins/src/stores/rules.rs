//! Rules in the database (`alert_rules`, CONTRACT §5): the config's rules
//! upserted at start (one removed from the file is disabled, never
//! deleted), every rule read back for evaluation, and the changes the REST
//! routes make.

use super::alerts::parse_severity;
use super::{Store, StorePool};
use crate::processors::alert_rules::rule::{Condition, Rule, RuleSource};
use crate::sinks::util::now_rfc3339;

/// An `alert_rules` row.
#[derive(sqlx::FromRow)]
struct RuleRow {
    id: String,
    name: String,
    description: String,
    enabled: bool,
    severity: String,
    condition: String,
    channels: String,
    repeat_interval_ms: Option<i64>,
    message: Option<String>,
    runbook_url: Option<String>,
    source: String,
    muted_until: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// A row that no longer reads as a rule (edited by hand, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// The rule's id.
    pub id: String,
    /// The rule's name.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

fn rule_of(row: RuleRow) -> Result<Rule, BadRow> {
    let bad = |problem: String| BadRow {
        id: row.id.clone(),
        name: row.name.clone(),
        problem,
    };
    let condition: Condition =
        serde_json::from_str(&row.condition).map_err(|e| bad(format!("condition: {e}")))?;
    let channels: Vec<String> =
        serde_json::from_str(&row.channels).map_err(|e| bad(format!("channels: {e}")))?;
    Ok(Rule {
        id: Some(row.id.clone()),
        name: row.name.clone(),
        description: row.description,
        enabled: row.enabled,
        severity: parse_severity(&row.severity),
        condition,
        channels,
        repeat_interval_ms: row.repeat_interval_ms.and_then(|n| u64::try_from(n).ok()),
        message: row.message,
        runbook_url: row.runbook_url,
        muted_until: row.muted_until,
        source: Some(if row.source == "config" {
            RuleSource::Config
        } else {
            RuleSource::Api
        }),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

const PG_COLUMNS: &str = concat!(
    "id::text AS id, name, description, enabled, severity, condition::text AS condition, ",
    "channels::text AS channels, repeat_interval_ms, message, runbook_url, source, ",
    pg_ts!("muted_until"),
    " AS muted_until, ",
    pg_ts!("created_at"),
    " AS created_at, ",
    pg_ts!("updated_at"),
    " AS updated_at"
);

const LITE_COLUMNS: &str =
    "id, name, description, enabled, severity, condition, channels, repeat_interval_ms, \
     message, runbook_url, source, muted_until, created_at, updated_at";

/// Every rule, by name; rows that no longer read as rules apart.
pub async fn load(store: &Store) -> Result<(Vec<Rule>, Vec<BadRow>), sqlx::Error> {
    let rows: Vec<RuleRow> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = format!("SELECT {PG_COLUMNS} FROM alert_rules ORDER BY name");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?
        }
        StorePool::Sqlite(pool) => {
            let sql = format!("SELECT {LITE_COLUMNS} FROM alert_rules ORDER BY name");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?
        }
    };
    let mut rules = Vec::new();
    let mut bad = Vec::new();
    for row in rows {
        match rule_of(row) {
            Ok(rule) => rules.push(rule),
            Err(b) => bad.push(b),
        }
    }
    Ok((rules, bad))
}

/// One rule, by id.
pub async fn fetch(store: &Store, id: &str) -> Result<Option<Result<Rule, BadRow>>, sqlx::Error> {
    let row: Option<RuleRow> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = format!("SELECT {PG_COLUMNS} FROM alert_rules WHERE id::text = $1");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
        StorePool::Sqlite(pool) => {
            let sql = format!("SELECT {LITE_COLUMNS} FROM alert_rules WHERE id = $1");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
    };
    Ok(row.map(rule_of))
}

/// Why a write of a rule was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleWriteError {
    /// Another rule has the name.
    #[error("a rule called `{0}` exists already")]
    DuplicateName(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Writes `rule` (id set) as `source`: inserted, or every field replaced
/// (but `created_at`, `source` and, for `keep_mute`, `muted_until`).
pub async fn upsert(
    store: &Store,
    rule: &Rule,
    source: RuleSource,
    keep_mute: bool,
) -> Result<(), RuleWriteError> {
    let id = rule.id.clone().unwrap_or_default();
    let condition = serde_json::to_string(&rule.condition).unwrap_or_else(|_| "{}".into());
    let channels = serde_json::to_string(&rule.channels).unwrap_or_else(|_| "[]".into());
    let repeat = rule.repeat_interval_ms.and_then(|n| i64::try_from(n).ok());
    let source = match source {
        RuleSource::Config => "config",
        RuleSource::Api => "api",
    };
    let now = now_rfc3339();
    let mute = if keep_mute {
        "muted_until = alert_rules.muted_until"
    } else {
        "muted_until = excluded.muted_until"
    };
    let result = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = format!(
                "INSERT INTO alert_rules (id, name, description, enabled, severity, condition, channels, repeat_interval_ms, \
                   message, runbook_url, source, muted_until, created_at, updated_at) \
                 VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12::timestamptz, $13::timestamptz, $13::timestamptz) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
                   enabled = excluded.enabled, severity = excluded.severity, condition = excluded.condition, \
                   channels = excluded.channels, repeat_interval_ms = excluded.repeat_interval_ms, \
                   message = excluded.message, runbook_url = excluded.runbook_url, {mute}, updated_at = excluded.updated_at"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&id)
                .bind(&rule.name)
                .bind(&rule.description)
                .bind(rule.enabled)
                .bind(rule.severity.as_str())
                .bind(&condition)
                .bind(&channels)
                .bind(repeat)
                .bind(&rule.message)
                .bind(&rule.runbook_url)
                .bind(source)
                .bind(&rule.muted_until)
                .bind(&now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        }
        StorePool::Sqlite(pool) => {
            let sql = format!(
                "INSERT INTO alert_rules (id, name, description, enabled, severity, condition, channels, repeat_interval_ms, \
                   message, runbook_url, source, muted_until, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
                   enabled = excluded.enabled, severity = excluded.severity, condition = excluded.condition, \
                   channels = excluded.channels, repeat_interval_ms = excluded.repeat_interval_ms, \
                   message = excluded.message, runbook_url = excluded.runbook_url, {mute}, updated_at = excluded.updated_at"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&id)
                .bind(&rule.name)
                .bind(&rule.description)
                .bind(rule.enabled)
                .bind(rule.severity.as_str())
                .bind(&condition)
                .bind(&channels)
                .bind(repeat)
                .bind(&rule.message)
                .bind(&rule.runbook_url)
                .bind(source)
                .bind(&rule.muted_until)
                .bind(&now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(RuleWriteError::DuplicateName(rule.name.clone())),
        Err(e) => Err(e.into()),
    }
}

/// Upserts the config's rules (`source = config`, mutes kept) and disables
/// config rules no longer in the file (never deleting them: their alerts
/// keep their history).
pub async fn sync_config_rules(store: &Store, rules: &[Rule]) -> Result<(), RuleWriteError> {
    for rule in rules {
        upsert(store, rule, RuleSource::Config, true).await?;
    }
    let ids: Vec<String> = rules.iter().filter_map(|r| r.id.clone()).collect();
    let list = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    match &store.pool {
        StorePool::Postgres(pool) => {
            sqlx::query(
                "UPDATE alert_rules SET enabled = false, updated_at = $2::timestamptz \
                 WHERE source = 'config' AND enabled AND id::text NOT IN (SELECT jsonb_array_elements_text($1::jsonb))",
            )
            .bind(&list)
            .bind(now_rfc3339())
            .execute(pool)
            .await?;
        }
        StorePool::Sqlite(pool) => {
            sqlx::query(
                "UPDATE alert_rules SET enabled = 0, updated_at = $2 \
                 WHERE source = 'config' AND enabled AND id NOT IN (SELECT value FROM json_each($1))",
            )
            .bind(&list)
            .bind(now_rfc3339())
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Sets or clears a rule's mute.
pub async fn set_mute(store: &Store, id: &str, until: Option<&str>) -> Result<u64, sqlx::Error> {
    let now = now_rfc3339();
    match &store.pool {
        StorePool::Postgres(pool) => sqlx::query(
            "UPDATE alert_rules SET muted_until = $2::timestamptz, updated_at = $3::timestamptz WHERE id::text = $1",
        )
        .bind(id).bind(until).bind(&now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()),
        StorePool::Sqlite(pool) => sqlx::query(
            "UPDATE alert_rules SET muted_until = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(id).bind(until).bind(&now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()),
    }
}

/// Whether a rule has open alerts.
pub async fn has_open_alerts(store: &Store, id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = match &store.pool {
        StorePool::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM alerts WHERE rule_id::text = $1 AND status <> 'resolved'",
            )
            .bind(id)
            .fetch_one(pool)
            .await?
        }
        StorePool::Sqlite(pool) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM alerts WHERE rule_id = $1 AND status <> 'resolved'",
            )
            .bind(id)
            .fetch_one(pool)
            .await?
        }
    };
    Ok(n > 0)
}

/// Deletes a rule (its alerts and their history cascade).
pub async fn delete(store: &Store, id: &str) -> Result<u64, sqlx::Error> {
    match &store.pool {
        StorePool::Postgres(pool) => sqlx::query("DELETE FROM alert_rules WHERE id::text = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        StorePool::Sqlite(pool) => sqlx::query("DELETE FROM alert_rules WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
}
