//! Alerts in the database (CONTRACT §5): a notice stored in one
//! transaction (the alert inserted or conditionally updated, `resolved`
//! final; one `alert_history` row per `notice_id`), and the reads the REST
//! routes and the rules need.

use flowpulse_core::alert::{Alert, AlertStatus, Severity};
use serde::Serialize;

use super::{Store, StorePool};
use crate::sinks::util::now_rfc3339;

/// One row of `alert_history`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertChange {
    /// The row's id.
    pub id: i64,
    /// The status before (null for the first).
    pub from_status: Option<String>,
    /// The status after.
    pub to_status: String,
    /// The alert's `repeat` after.
    pub repeat: i64,
    /// `rule`, `api`, `api:NAME` or `expiry`.
    pub actor: String,
    /// The person's comment, if any.
    pub comment: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// Who made the change a notice reports.
fn actor(alert: &Alert) -> String {
    match alert.status {
        AlertStatus::Acknowledged => alert.acknowledged_by.clone(),
        AlertStatus::Resolved => alert.resolved_by.clone(),
        AlertStatus::Triggered => None,
    }
    .unwrap_or_else(|| "rule".to_owned())
}

/// Who made the change: an alert still firing whose acknowledgement ran
/// out is back to `triggered` by `expiry`.
fn change_actor(from: Option<&str>, alert: &Alert, actor: &str) -> String {
    if from == Some("acknowledged") && alert.status == AlertStatus::Triggered {
        "expiry".to_owned()
    } else {
        actor.to_owned()
    }
}

/// When the change a notice reports happened.
fn changed_at(alert: &Alert) -> String {
    match alert.status {
        AlertStatus::Acknowledged => alert.acknowledged_at.clone(),
        AlertStatus::Resolved => alert.resolved_at.clone(),
        AlertStatus::Triggered if alert.repeat == 0 => Some(alert.created_at.clone()),
        AlertStatus::Triggered => None,
    }
    .unwrap_or_else(now_rfc3339)
}

const PG_RULE: &str = "INSERT INTO alert_rules (id, name, severity, condition, channels, source, created_at, updated_at) \
     VALUES ($1::uuid, $2, $3, $4::jsonb, $5::jsonb, 'config', now(), now()) ON CONFLICT DO NOTHING";
const LITE_RULE: &str = "INSERT OR IGNORE INTO alert_rules (id, name, severity, condition, channels, source, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, 'config', strftime('%Y-%m-%dT%H:%M:%fZ','now'), strftime('%Y-%m-%dT%H:%M:%fZ','now'))";

const PG_STATUS: &str = "SELECT status FROM alerts WHERE id = $1::uuid FOR UPDATE";
const LITE_STATUS: &str = "SELECT status FROM alerts WHERE id = $1";

const PG_UPSERT: &str = "INSERT INTO alerts (id, rule_id, instance, severity, message, metric, operator, threshold, value, data, status, repeat, \
       created_at, acknowledged_at, acknowledged_until, resolved_at, acknowledged_by, resolved_by, updated_at) \
     VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, \
       $13::timestamptz, $14::timestamptz, $15::timestamptz, $16::timestamptz, $17, $18, now()) \
     ON CONFLICT (id) DO UPDATE SET message = EXCLUDED.message, value = EXCLUDED.value, data = EXCLUDED.data, \
       status = EXCLUDED.status, repeat = EXCLUDED.repeat, acknowledged_at = EXCLUDED.acknowledged_at, \
       acknowledged_until = EXCLUDED.acknowledged_until, resolved_at = EXCLUDED.resolved_at, \
       acknowledged_by = EXCLUDED.acknowledged_by, resolved_by = EXCLUDED.resolved_by, updated_at = now() \
     WHERE alerts.status <> 'resolved' AND EXCLUDED.repeat >= alerts.repeat";
const LITE_UPSERT: &str = "INSERT INTO alerts (id, rule_id, instance, severity, message, metric, operator, threshold, value, data, status, repeat, \
       created_at, acknowledged_at, acknowledged_until, resolved_at, acknowledged_by, resolved_by, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, strftime('%Y-%m-%dT%H:%M:%fZ','now')) \
     ON CONFLICT (id) DO UPDATE SET message = excluded.message, value = excluded.value, data = excluded.data, \
       status = excluded.status, repeat = excluded.repeat, acknowledged_at = excluded.acknowledged_at, \
       acknowledged_until = excluded.acknowledged_until, resolved_at = excluded.resolved_at, \
       acknowledged_by = excluded.acknowledged_by, resolved_by = excluded.resolved_by, updated_at = excluded.updated_at \
     WHERE alerts.status <> 'resolved' AND excluded.repeat >= alerts.repeat";

const PG_HISTORY: &str = "INSERT INTO alert_history (alert_id, notice_id, from_status, to_status, repeat, actor, comment, at) \
     VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, NULL, $7::timestamptz) ON CONFLICT (notice_id) DO NOTHING";
const LITE_HISTORY: &str = "INSERT INTO alert_history (alert_id, notice_id, from_status, to_status, repeat, actor, comment, at) \
     VALUES ($1, $2, $3, $4, $5, $6, NULL, $7) ON CONFLICT (notice_id) DO NOTHING";

/// The notice id of resolving `alert_id` at `repeat`.
fn superseded_notice(alert_id: &str, repeat: i64) -> String {
    flowpulse_core::alert::notice_id(
        alert_id,
        AlertStatus::Resolved,
        u32::try_from(repeat).unwrap_or(0),
    )
}

/// Stores one notice in one transaction. A new alert for a rule and
/// instance that still has an open one (made before a crash the rules'
/// state did not keep) resolves the older one first (`resolved_by =
/// "rule"`, its history saying by what), so there is never a second open
/// alert and the sink never stalls on one. Storing the same notice again
/// changes nothing; a notice older than what is stored (a lower `repeat`,
/// or anything after `resolved`) adds its history row at most.
pub async fn store_notice(store: &Store, alert: &Alert) -> Result<(), sqlx::Error> {
    let condition = serde_json::json!({
        "metric": alert.metric, "operator": alert.operator, "value": alert.threshold, "duration_ms": 0
    })
    .to_string();
    let channels = serde_json::to_string(&alert.channels).unwrap_or_else(|_| "[]".into());
    let data = alert.data.to_string();
    let notice_id = if alert.notice_id.is_empty() {
        alert.notice_id()
    } else {
        alert.notice_id.clone()
    };
    let at = changed_at(alert);
    let actor = actor(alert);
    let repeat = i64::from(alert.repeat);
    match &store.pool {
        StorePool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // A notice stored before (sent again after a crash or a failed
            // receipt) changes nothing: an older one must not overwrite a
            // later change, such as a person's acknowledgement.
            let known: i64 =
                sqlx::query_scalar("SELECT count(*) FROM alert_history WHERE notice_id = $1::uuid")
                    .bind(&notice_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if known > 0 {
                return tx.commit().await;
            }
            sqlx::query(PG_RULE)
                .bind(&alert.rule_id)
                .bind(&alert.rule_name)
                .bind(alert.severity.as_str())
                .bind(&condition)
                .bind(&channels)
                .execute(&mut *tx)
                .await?;
            let from: Option<String> = sqlx::query_scalar(PG_STATUS)
                .bind(&alert.id)
                .fetch_optional(&mut *tx)
                .await?;
            if from.is_none() && alert.status != AlertStatus::Resolved {
                let older: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT id::text, repeat::bigint, status FROM alerts \
                     WHERE rule_id = $1::uuid AND instance = $2 AND status <> 'resolved' FOR UPDATE",
                )
                .bind(&alert.rule_id)
                .bind(&alert.instance)
                .fetch_all(&mut *tx)
                .await?;
                for (old_id, old_repeat, old_status) in older {
                    sqlx::query("UPDATE alerts SET status = 'resolved', resolved_at = $2::timestamptz, resolved_by = 'rule', updated_at = now() WHERE id::text = $1")
                        .bind(&old_id).bind(&at).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO alert_history (alert_id, notice_id, from_status, to_status, repeat, actor, comment, at) \
                                 VALUES ($1::uuid, $2::uuid, $3, 'resolved', $4, 'rule', $5, $6::timestamptz) ON CONFLICT (notice_id) DO NOTHING")
                        .bind(&old_id)
                        .bind(superseded_notice(&old_id, old_repeat))
                        .bind(&old_status).bind(old_repeat)
                        .bind(format!("superseded by {}", alert.id)).bind(&at)
                        .execute(&mut *tx).await?;
                }
            }
            upsert(sqlx::query(PG_UPSERT), alert, &data, repeat)
                .execute(&mut *tx)
                .await?;
            sqlx::query(PG_HISTORY)
                .bind(&alert.id)
                .bind(&notice_id)
                .bind(from.as_deref())
                .bind(alert.status.as_str())
                .bind(repeat)
                .bind(change_actor(from.as_deref(), alert, &actor))
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        StorePool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let known: i64 =
                sqlx::query_scalar("SELECT count(*) FROM alert_history WHERE notice_id = $1")
                    .bind(&notice_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if known > 0 {
                return tx.commit().await;
            }
            sqlx::query(LITE_RULE)
                .bind(&alert.rule_id)
                .bind(&alert.rule_name)
                .bind(alert.severity.as_str())
                .bind(&condition)
                .bind(&channels)
                .execute(&mut *tx)
                .await?;
            let from: Option<String> = sqlx::query_scalar(LITE_STATUS)
                .bind(&alert.id)
                .fetch_optional(&mut *tx)
                .await?;
            if from.is_none() && alert.status != AlertStatus::Resolved {
                let older: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT id, repeat, status FROM alerts \
                     WHERE rule_id = $1 AND instance = $2 AND status <> 'resolved'",
                )
                .bind(&alert.rule_id)
                .bind(&alert.instance)
                .fetch_all(&mut *tx)
                .await?;
                for (old_id, old_repeat, old_status) in older {
                    sqlx::query("UPDATE alerts SET status = 'resolved', resolved_at = $2, resolved_by = 'rule', updated_at = $2 WHERE id = $1")
                        .bind(&old_id).bind(&at).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO alert_history (alert_id, notice_id, from_status, to_status, repeat, actor, comment, at) \
                                 VALUES ($1, $2, $3, 'resolved', $4, 'rule', $5, $6) ON CONFLICT (notice_id) DO NOTHING")
                        .bind(&old_id)
                        .bind(superseded_notice(&old_id, old_repeat))
                        .bind(&old_status).bind(old_repeat)
                        .bind(format!("superseded by {}", alert.id)).bind(&at)
                        .execute(&mut *tx).await?;
                }
            }
            upsert(sqlx::query(LITE_UPSERT), alert, &data, repeat)
                .execute(&mut *tx)
                .await?;
            sqlx::query(LITE_HISTORY)
                .bind(&alert.id)
                .bind(&notice_id)
                .bind(from.as_deref())
                .bind(alert.status.as_str())
                .bind(repeat)
                .bind(change_actor(from.as_deref(), alert, &actor))
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
    }
}

/// Binds an alert's columns, in the order of the upsert statements.
fn upsert<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    alert: &'q Alert,
    data: &'q str,
    repeat: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(alert.id.as_str())
        .bind(alert.rule_id.as_str())
        .bind(alert.instance.as_str())
        .bind(alert.severity.as_str())
        .bind(alert.message.as_str())
        .bind(alert.metric.as_str())
        .bind(alert.operator.as_str())
        .bind(alert.threshold)
        .bind(alert.value)
        .bind(data)
        .bind(alert.status.as_str())
        .bind(repeat)
        .bind(alert.created_at.as_str())
        .bind(alert.acknowledged_at.as_deref())
        .bind(alert.acknowledged_until.as_deref())
        .bind(alert.resolved_at.as_deref())
        .bind(alert.acknowledged_by.as_deref())
        .bind(alert.resolved_by.as_deref())
}

/// The stored status of an alert and who changed it last.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStatus {
    /// The alert.
    pub id: String,
    /// Its status.
    pub status: AlertStatus,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Until when.
    pub acknowledged_until: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// Its `repeat`.
    pub repeat: u32,
}

fn parse_status(text: &str) -> AlertStatus {
    match text {
        "acknowledged" => AlertStatus::Acknowledged,
        "resolved" => AlertStatus::Resolved,
        _ => AlertStatus::Triggered,
    }
}

/// Parses a severity as stored.
pub fn parse_severity(text: &str) -> Severity {
    match text {
        "critical" => Severity::Critical,
        "info" => Severity::Info,
        _ => Severity::Warning,
    }
}

/// The stored statuses of the alerts `ids` (one indexed query).
pub async fn statuses(store: &Store, ids: &[String]) -> Result<Vec<StoredStatus>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
    );
    let rows: Vec<Row> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = concat!(
                "SELECT id::text, status, acknowledged_by, ",
                pg_ts!("acknowledged_until"),
                ", resolved_by, repeat::bigint FROM alerts ",
                "WHERE id IN (SELECT value::uuid FROM jsonb_array_elements_text($1::jsonb))"
            );
            sqlx::query_as(sql).bind(&list).fetch_all(pool).await?
        }
        StorePool::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT id, status, acknowledged_by, acknowledged_until, resolved_by, repeat \
                 FROM alerts WHERE id IN (SELECT value FROM json_each($1))",
            )
            .bind(&list)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(
            |(id, status, acknowledged_by, acknowledged_until, resolved_by, repeat)| StoredStatus {
                id,
                status: parse_status(&status),
                acknowledged_by,
                acknowledged_until,
                resolved_by,
                repeat: u32::try_from(repeat).unwrap_or(0),
            },
        )
        .collect())
}

/// How many rows of `alert_history` an alert has.
pub async fn history_len(store: &Store, alert_id: &str) -> Result<i64, sqlx::Error> {
    match &store.pool {
        StorePool::Postgres(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM alert_history WHERE alert_id = $1::uuid")
                .bind(alert_id)
                .fetch_one(pool)
                .await
        }
        StorePool::Sqlite(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM alert_history WHERE alert_id = $1")
                .bind(alert_id)
                .fetch_one(pool)
                .await
        }
    }
}

/// An `alerts` row with its rule's name, channels, runbook and mute, in
/// the order of the column lists below.
#[derive(sqlx::FromRow)]
struct AlertRow {
    id: String,
    rule_id: String,
    rule_name: String,
    instance: String,
    severity: String,
    status: String,
    message: String,
    metric: String,
    operator: String,
    threshold: f64,
    value: Option<f64>,
    data: String,
    channels: String,
    runbook_url: Option<String>,
    muted_until: Option<String>,
    repeat: i64,
    created_at: Option<String>,
    acknowledged_at: Option<String>,
    acknowledged_by: Option<String>,
    acknowledged_until: Option<String>,
    resolved_at: Option<String>,
    resolved_by: Option<String>,
}

const PG_COLUMNS: &str = concat!(
    "a.id::text AS id, a.rule_id::text AS rule_id, r.name AS rule_name, a.instance, a.severity, a.status, ",
    "a.message, a.metric, a.operator, a.threshold, a.value, a.data::text AS data, r.channels::text AS channels, ",
    "r.runbook_url, ", pg_ts!("r.muted_until"), " AS muted_until, a.repeat::bigint AS repeat, ",
    pg_ts!("a.created_at"), " AS created_at, ", pg_ts!("a.acknowledged_at"), " AS acknowledged_at, a.acknowledged_by, ",
    pg_ts!("a.acknowledged_until"), " AS acknowledged_until, ", pg_ts!("a.resolved_at"), " AS resolved_at, a.resolved_by"
);

const LITE_COLUMNS: &str = "a.id, a.rule_id, r.name AS rule_name, a.instance, a.severity, a.status, a.message, a.metric, a.operator, \
     a.threshold, a.value, a.data, r.channels, r.runbook_url, r.muted_until, a.repeat, \
     a.created_at, a.acknowledged_at, a.acknowledged_by, a.acknowledged_until, a.resolved_at, a.resolved_by";

fn alert_of(row: AlertRow) -> Alert {
    let AlertRow {
        id,
        rule_id,
        rule_name,
        instance,
        severity,
        status,
        message,
        metric,
        operator,
        threshold,
        value,
        data,
        channels,
        runbook_url,
        muted_until,
        repeat,
        created_at,
        acknowledged_at,
        acknowledged_by,
        acknowledged_until,
        resolved_at,
        resolved_by,
    } = row;
    let data: serde_json::Value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut alert = Alert {
        as_of: data["as_of"].as_str().unwrap_or_default().to_owned(),
        id,
        rule_id,
        rule_name,
        instance,
        severity: parse_severity(&severity),
        status: parse_status(&status),
        message,
        metric,
        operator,
        threshold,
        value,
        data,
        channels: serde_json::from_str(&channels).unwrap_or_default(),
        runbook_url,
        muted: muted_until
            .as_deref()
            .and_then(flowpulse_core::event::parse_rfc3339_ms)
            .is_some_and(|until| until > now_ms),
        repeat: u32::try_from(repeat).unwrap_or(0),
        notice_id: String::new(),
        created_at: created_at.unwrap_or_default(),
        acknowledged_at,
        acknowledged_by,
        acknowledged_until,
        resolved_at,
        resolved_by,
    };
    alert.notice_id = alert.notice_id();
    alert
}

/// Every open alert (triggered or acknowledged): one query on the
/// `status` index.
pub async fn open(store: &Store) -> Result<Vec<Alert>, sqlx::Error> {
    let rows: Vec<AlertRow> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = format!("SELECT {PG_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id WHERE a.status <> 'resolved'");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?
        }
        StorePool::Sqlite(pool) => {
            let sql = format!("SELECT {LITE_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id WHERE a.status <> 'resolved'");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows.into_iter().map(alert_of).collect())
}

/// One alert, if it exists.
pub async fn fetch(store: &Store, id: &str) -> Result<Option<Alert>, sqlx::Error> {
    let row: Option<AlertRow> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = format!("SELECT {PG_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id WHERE a.id::text = $1");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
        StorePool::Sqlite(pool) => {
            let sql = format!("SELECT {LITE_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id WHERE a.id = $1");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
    };
    Ok(row.map(alert_of))
}

/// Filters of `GET /alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Statuses (any of).
    pub statuses: Option<Vec<String>>,
    /// Severity.
    pub severity: Option<String>,
    /// Rule.
    pub rule_id: Option<String>,
    /// Instance.
    pub instance: Option<String>,
    /// `created_at` at or after (RFC 3339 UTC, milliseconds).
    pub since: Option<String>,
    /// `created_at` before.
    pub until: Option<String>,
    /// Continue after this (created_at, id).
    pub after: Option<(String, String)>,
    /// At most this many.
    pub limit: u32,
}

/// Alerts newest first, and the (created_at, id) to continue after when
/// there are more.
pub async fn list(
    store: &Store,
    filter: &AlertFilter,
) -> Result<(Vec<Alert>, Option<(String, String)>), sqlx::Error> {
    let statuses = filter
        .statuses
        .as_ref()
        .map(|s| serde_json::to_string(s).unwrap_or_else(|_| "[]".into()));
    let (after_at, after_id) = match &filter.after {
        Some((at, id)) => (Some(at.clone()), Some(id.clone())),
        None => (None, None),
    };
    let limit = i64::from(filter.limit) + 1;
    let rows: Vec<AlertRow> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = format!(
                "SELECT {PG_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id \
                 WHERE ($1::text IS NULL OR a.status IN (SELECT jsonb_array_elements_text($1::jsonb))) \
                   AND ($2::text IS NULL OR a.severity = $2) \
                   AND ($3::text IS NULL OR a.rule_id::text = $3) \
                   AND ($4::text IS NULL OR a.instance = $4) \
                   AND ($5::text IS NULL OR a.created_at >= $5::timestamptz) \
                   AND ($6::text IS NULL OR a.created_at < $6::timestamptz) \
                   AND ($7::text IS NULL OR (a.created_at, a.id::text) < ($7::timestamptz, $8::text)) \
                 ORDER BY a.created_at DESC, a.id::text DESC LIMIT $9"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&statuses)
                .bind(&filter.severity)
                .bind(&filter.rule_id)
                .bind(&filter.instance)
                .bind(&filter.since)
                .bind(&filter.until)
                .bind(&after_at)
                .bind(&after_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
        StorePool::Sqlite(pool) => {
            let sql = format!(
                "SELECT {LITE_COLUMNS} FROM alerts a JOIN alert_rules r ON r.id = a.rule_id \
                 WHERE ($1 IS NULL OR a.status IN (SELECT value FROM json_each($1))) \
                   AND ($2 IS NULL OR a.severity = $2) \
                   AND ($3 IS NULL OR a.rule_id = $3) \
                   AND ($4 IS NULL OR a.instance = $4) \
                   AND ($5 IS NULL OR a.created_at >= $5) \
                   AND ($6 IS NULL OR a.created_at < $6) \
                   AND ($7 IS NULL OR (a.created_at, a.id) < ($7, $8)) \
                 ORDER BY a.created_at DESC, a.id DESC LIMIT $9"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&statuses)
                .bind(&filter.severity)
                .bind(&filter.rule_id)
                .bind(&filter.instance)
                .bind(&filter.since)
                .bind(&filter.until)
                .bind(&after_at)
                .bind(&after_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
    };
    let mut alerts: Vec<Alert> = rows.into_iter().map(alert_of).collect();
    let more = alerts.len() > filter.limit as usize;
    alerts.truncate(filter.limit as usize);
    let next = more
        .then(|| alerts.last().map(|a| (a.created_at.clone(), a.id.clone())))
        .flatten();
    Ok((alerts, next))
}

/// An alert's history, oldest first.
pub async fn history(store: &Store, alert_id: &str) -> Result<Vec<AlertChange>, sqlx::Error> {
    type Row = (
        i64,
        Option<String>,
        String,
        i64,
        String,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = match &store.pool {
        StorePool::Postgres(pool) => {
            let sql = concat!(
                "SELECT id, from_status, to_status, repeat::bigint, actor, comment, ",
                pg_ts!("at"),
                " FROM alert_history WHERE alert_id::text = $1 ORDER BY at, id"
            );
            sqlx::query_as(sql).bind(alert_id).fetch_all(pool).await?
        }
        StorePool::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT id, from_status, to_status, repeat, actor, comment, at \
                 FROM alert_history WHERE alert_id = $1 ORDER BY at, id",
            )
            .bind(alert_id)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(
            |(id, from_status, to_status, repeat, actor, comment, at)| AlertChange {
                id,
                from_status,
                to_status,
                repeat,
                actor,
                comment,
                at: at.unwrap_or_default(),
            },
        )
        .collect())
}

/// What a person's change did.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// Changed (or, for a repeated acknowledgement, already so): the alert now.
    Done(Alert),
    /// No such alert.
    NotFound,
    /// Resolved already: final.
    Resolved(Alert),
}

/// A person's change: `acknowledged` (with `until`) or `resolved`, in one
/// transaction with its history row. The row's `notice_id` is the one the
/// notice of this change will carry, so that notice adds nothing. Racing
/// requests are safe: the update is conditional on the status read.
pub async fn change(
    store: &Store,
    id: &str,
    to: AlertStatus,
    actor: &str,
    comment: Option<&str>,
    until: Option<&str>,
) -> Result<ChangeOutcome, sqlx::Error> {
    // A racing change (an acknowledgement landing between our read and our
    // update) makes the conditional update miss: read again and retry.
    for _ in 0..8 {
        if let Some(outcome) = change_once(store, id, to, actor, comment, until).await? {
            return Ok(outcome);
        }
    }
    Ok(match fetch(store, id).await? {
        None => ChangeOutcome::NotFound,
        Some(alert) if alert.status == AlertStatus::Resolved => ChangeOutcome::Resolved(alert),
        Some(alert) => ChangeOutcome::Done(alert),
    })
}

/// One attempt of [`change`]: `None` when a racing change got there first.
async fn change_once(
    store: &Store,
    id: &str,
    to: AlertStatus,
    actor: &str,
    comment: Option<&str>,
    until: Option<&str>,
) -> Result<Option<ChangeOutcome>, sqlx::Error> {
    let now = now_rfc3339();
    let Some(current) = fetch(store, id).await? else {
        return Ok(Some(ChangeOutcome::NotFound));
    };
    if current.status == AlertStatus::Resolved {
        return Ok(Some(ChangeOutcome::Resolved(current)));
    }
    if current.status == to {
        return Ok(Some(ChangeOutcome::Done(current)));
    }
    let notice = flowpulse_core::alert::notice_id(&current.id, to, current.repeat);
    let from = current.status.as_str();
    let repeat = i64::from(current.repeat);
    let changed = match &store.pool {
        StorePool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let updated = match to {
                AlertStatus::Acknowledged => sqlx::query(
                    "UPDATE alerts SET status = 'acknowledged', acknowledged_at = $2::timestamptz, acknowledged_by = $3, \
                     acknowledged_until = $4::timestamptz, updated_at = now() WHERE id::text = $1 AND status = $5 AND repeat = $6",
                )
                .bind(id).bind(&now).bind(actor).bind(until).bind(from).bind(repeat)
                .execute(&mut *tx).await?,
                _ => sqlx::query(
                    "UPDATE alerts SET status = 'resolved', resolved_at = $2::timestamptz, resolved_by = $3, \
                     updated_at = now() WHERE id::text = $1 AND status = $4 AND repeat = $5",
                )
                .bind(id).bind(&now).bind(actor).bind(from).bind(repeat)
                .execute(&mut *tx).await?,
            };
            if updated.rows_affected() == 1 {
                sqlx::query(
                    "INSERT INTO alert_history (alert_id, notice_id, from_status, to_status, repeat, actor, comment, at) \
                     VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8::timestamptz) ON CONFLICT (notice_id) DO NOTHING",
                )
                .bind(id).bind(&notice).bind(from).bind(to.as_str()).bind(repeat).bind(actor).bind(comment).bind(&now)
                .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            updated.rows_affected() == 1
        }
        StorePool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let updated = match to {
                AlertStatus::Acknowledged => sqlx::query(
                    "UPDATE alerts SET status = 'acknowledged', acknowledged_at = $2, acknowledged_by = $3, \
                     acknowledged_until = $4, updated_at = $2 WHERE id = $1 AND status = $5 AND repeat = $6",
                )
                .bind(id).bind(&now).bind(actor).bind(until).bind(from).bind(repeat)
                .execute(&mut *tx).await?,
                _ => sqlx::query(
                    "UPDATE alerts SET status = 'resolved', resolved_at = $2, resolved_by = $3, updated_at = $2 \
                     WHERE id = $1 AND status = $4 AND repeat = $5",
                )
                .bind(id).bind(&now).bind(actor).bind(from).bind(repeat)
                .execute(&mut *tx).await?,
            };
            if updated.rows_affected() == 1 {
                sqlx::query(
                    "INSERT INTO alert_history (alert_id, notice_id, from_status, to_status, repeat, actor, comment, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (notice_id) DO NOTHING",
                )
                .bind(id).bind(&notice).bind(from).bind(to.as_str()).bind(repeat).bind(actor).bind(comment).bind(&now)
                .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            updated.rows_affected() == 1
        }
    };
    if !changed {
        return Ok(None);
    }
    Ok(Some(match fetch(store, id).await? {
        None => ChangeOutcome::NotFound,
        Some(alert) => ChangeOutcome::Done(alert),
    }))
}
