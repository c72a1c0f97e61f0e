//! Alerts in the database (CONTRACT §5): a notice stored in one
//! transaction (the alert inserted or conditionally updated, `resolved`
//! final; one `alert_history` row per `notice_id`), and the reads the REST
//! routes and the rules need.

use flowpulse_core::alert::{Alert, AlertStatus, Severity};
use flowpulse_core::event::format_rfc3339_ms;
use serde::Serialize;

use super::{Store, StorePool};

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

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format_rfc3339_ms(ms)
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

/// Stores one notice in one transaction. Storing the same notice again
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
            upsert(sqlx::query(PG_UPSERT), alert, &data, repeat)
                .execute(&mut *tx)
                .await?;
            sqlx::query(PG_HISTORY)
                .bind(&alert.id)
                .bind(&notice_id)
                .bind(from)
                .bind(alert.status.as_str())
                .bind(repeat)
                .bind(&actor)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        StorePool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
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
            upsert(sqlx::query(LITE_UPSERT), alert, &data, repeat)
                .execute(&mut *tx)
                .await?;
            sqlx::query(LITE_HISTORY)
                .bind(&alert.id)
                .bind(&notice_id)
                .bind(from)
                .bind(alert.status.as_str())
                .bind(repeat)
                .bind(&actor)
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
    );
    let rows: Vec<Row> = match &store.pool {
        StorePool::Postgres(pool) => {
            sqlx::query_as(
                "SELECT id::text, status, acknowledged_by, \
                        to_char(acknowledged_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), resolved_by \
                 FROM alerts WHERE id IN (SELECT value::uuid FROM jsonb_array_elements_text($1::jsonb))",
            )
            .bind(&list)
            .fetch_all(pool)
            .await?
        }
        StorePool::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT id, status, acknowledged_by, acknowledged_until, resolved_by \
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
            |(id, status, acknowledged_by, acknowledged_until, resolved_by)| StoredStatus {
                id,
                status: parse_status(&status),
                acknowledged_by,
                acknowledged_until,
                resolved_by,
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
