//! The alert database on both dialects against real servers: each
//! PostgreSQL test creates (through `Store::prepare`) and drops its own
//! database on 127.0.0.1:5432; SQLite lives in a temp dir.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowpulse_core::config::StoreSettings;
use flowpulse_plugins::stores::{Dialect, Store, StorePool};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn settings(url: String) -> StoreSettings {
    StoreSettings {
        url,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
        retention: Duration::from_secs(90 * 24 * 3600),
    }
}

fn server_url() -> String {
    std::env::var("FLOWPULSE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A PostgreSQL database of this test's own (not created yet), dropped on drop.
struct OwnDatabase {
    name: String,
}

impl OwnDatabase {
    fn new(test: &str) -> OwnDatabase {
        OwnDatabase {
            name: format!(
                "flowpulse_test_{test}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    fn url(&self) -> String {
        let base = server_url();
        let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
        format!("{server}/{}", self.name)
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        // psql is beside every PostgreSQL; dropping through it avoids a runtime in Drop.
        let _ = std::process::Command::new("psql")
            .arg(server_url())
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// The statement for the store's dialect: PostgreSQL casts text to uuid
/// and jsonb; SQLite keeps them as text.
fn sql(store: &Store, postgres: &'static str, sqlite: &'static str) -> &'static str {
    match store.pool.dialect() {
        Dialect::Postgres => postgres,
        Dialect::Sqlite => sqlite,
    }
}

async fn execute(
    store: &Store,
    statement: &'static str,
    binds: &[&str],
) -> Result<u64, sqlx::Error> {
    match &store.pool {
        StorePool::Postgres(pool) => {
            let mut query = sqlx::query(statement);
            for b in binds {
                query = query.bind(*b);
            }
            query.execute(pool).await.map(|r| r.rows_affected())
        }
        StorePool::Sqlite(pool) => {
            let mut query = sqlx::query(statement);
            for b in binds {
                query = query.bind(*b);
            }
            query.execute(pool).await.map(|r| r.rows_affected())
        }
    }
}

async fn count(store: &Store, table: &'static str) -> i64 {
    let statement = match table {
        "alert_rules" => "SELECT count(*) FROM alert_rules",
        "alerts" => "SELECT count(*) FROM alerts",
        "alert_history" => "SELECT count(*) FROM alert_history",
        other => panic!("no table {other}"),
    };
    match &store.pool {
        StorePool::Postgres(pool) => sqlx::query_scalar(statement).fetch_one(pool).await.unwrap(),
        StorePool::Sqlite(pool) => sqlx::query_scalar(statement).fetch_one(pool).await.unwrap(),
    }
}

async fn insert_rule(store: &Store, id: &str, name: &str) {
    let statement = sql(
        store,
        "INSERT INTO alert_rules (id, name, severity, condition, created_at, updated_at) \
         VALUES ($1::uuid, $2, 'warning', '{\"metric\":\"overview.error_rate_percent\"}'::jsonb, now(), now())",
        "INSERT INTO alert_rules (id, name, severity, condition, created_at, updated_at) \
         VALUES ($1, $2, 'warning', '{\"metric\":\"overview.error_rate_percent\"}', '2026-11-30T00:00:00.000Z', '2026-11-30T00:00:00.000Z')",
    );
    execute(store, statement, &[id, name]).await.unwrap();
}

async fn insert_alert(
    store: &Store,
    id: &str,
    rule: &str,
    status: &str,
) -> Result<u64, sqlx::Error> {
    let statement = sql(
        store,
        "INSERT INTO alerts (id, rule_id, instance, severity, message, metric, operator, threshold, data, status, created_at, updated_at) \
         VALUES ($1::uuid, $2::uuid, 'scaffold', 'warning', 'm', 'agents[scaffold].success_rate_percent', '<', 90, '{}'::jsonb, $3, now(), now())",
        "INSERT INTO alerts (id, rule_id, instance, severity, message, metric, operator, threshold, data, status, created_at, updated_at) \
         VALUES ($1, $2, 'scaffold', 'warning', 'm', 'agents[scaffold].success_rate_percent', '<', 90, '{}', $3, '2026-11-30T00:00:00.000Z', '2026-11-30T00:00:00.000Z')",
    );
    execute(store, statement, &[id, rule, status]).await
}

async fn insert_history(store: &Store, alert: &str, notice: &str) -> Result<u64, sqlx::Error> {
    let statement = sql(
        store,
        "INSERT INTO alert_history (alert_id, notice_id, to_status, repeat, actor, at) \
         VALUES ($1::uuid, $2::uuid, 'triggered', 0, 'rule', now())",
        "INSERT INTO alert_history (alert_id, notice_id, to_status, repeat, actor, at) \
         VALUES ($1, $2, 'triggered', 0, 'rule', '2026-11-30T00:00:00.000Z')",
    );
    execute(store, statement, &[alert, notice]).await
}

const RULE: &str = "6f1c6c1e-7f5a-5b7e-8d3e-0a1b2c3d4e5f";
const ALERT_1: &str = "11111111-1111-4111-8111-111111111111";
const ALERT_2: &str = "22222222-2222-4222-8222-222222222222";
const ALERT_3: &str = "33333333-3333-4333-8333-333333333333";
const NOTICE: &str = "44444444-4444-5444-8444-444444444444";

/// What both dialects must do: migrations twice, one open alert per rule
/// and instance, one history row per notice, deletes that cascade.
async fn the_schema_holds_its_promises(store: &Store) {
    store.prepare().await.unwrap();
    assert!(store.is_ready());
    store.prepare().await.expect("migrations run twice");

    insert_rule(store, RULE, "scaffold failing").await;
    insert_alert(store, ALERT_1, RULE, "triggered")
        .await
        .unwrap();
    let second_open = insert_alert(store, ALERT_2, RULE, "acknowledged").await;
    assert!(
        second_open.is_err(),
        "alerts_one_open lets a second open alert in"
    );
    // A resolved one beside the open one is fine.
    insert_alert(store, ALERT_3, RULE, "resolved")
        .await
        .unwrap();

    insert_history(store, ALERT_1, NOTICE).await.unwrap();
    assert!(
        insert_history(store, ALERT_1, NOTICE).await.is_err(),
        "a notice stored twice adds two history rows"
    );
    assert_eq!(count(store, "alert_history").await, 1);

    let delete = sql(
        store,
        "DELETE FROM alert_rules WHERE id = $1::uuid",
        "DELETE FROM alert_rules WHERE id = $1",
    );
    assert_eq!(execute(store, delete, &[RULE]).await.unwrap(), 1);
    assert_eq!(
        count(store, "alerts").await,
        0,
        "alerts cascade with their rule"
    );
    assert_eq!(
        count(store, "alert_history").await,
        0,
        "history cascades with its alert"
    );
}

#[tokio::test]
async fn postgres_database_is_created_migrated_and_keeps_the_schema_promises() {
    let database = OwnDatabase::new("schema");
    let store = Store::new("main", &settings(database.url())).unwrap();
    assert_eq!(store.pool.dialect(), Dialect::Postgres);
    the_schema_holds_its_promises(&store).await;
    if let StorePool::Postgres(pool) = &store.pool {
        pool.close().await;
    }
}

#[tokio::test]
async fn sqlite_file_is_created_migrated_and_keeps_the_schema_promises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db/flowpulse.db");
    let store = Store::new("main", &settings(format!("sqlite://{}", path.display()))).unwrap();
    assert_eq!(store.pool.dialect(), Dialect::Sqlite);
    the_schema_holds_its_promises(&store).await;
    assert!(path.exists());
    if let StorePool::Sqlite(pool) = &store.pool {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_an_error_naming_the_store_without_the_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let store = Store::new(
        "main",
        &settings(format!("postgres://flowpulse:secret@127.0.0.1:{port}/x")),
    )
    .unwrap();
    let e = store.prepare().await.unwrap_err().to_string();
    assert!(e.contains("store \"main\"") && !e.contains("secret"), "{e}");
    assert!(!store.is_ready());
}

fn notice(status: flowpulse_core::alert::AlertStatus, repeat: u32) -> flowpulse_core::alert::Alert {
    use flowpulse_core::alert::{Alert, AlertStatus, Severity};
    let mut alert = Alert {
        id: ALERT_1.into(),
        rule_id: RULE.into(),
        rule_name: "scaffold failing".into(),
        instance: "scaffold".into(),
        severity: Severity::Warning,
        status,
        message: "scaffold at 80%".into(),
        metric: "agents[scaffold].success_rate_percent".into(),
        operator: "<".into(),
        threshold: 90.0,
        value: Some(80.0),
        data: serde_json::json!({"value": 80.0}),
        channels: vec!["dashboard".into()],
        runbook_url: None,
        muted: false,
        repeat,
        notice_id: String::new(),
        as_of: "2026-11-30T10:00:00.000Z".into(),
        created_at: "2026-11-30T10:00:00.000Z".into(),
        acknowledged_at: None,
        acknowledged_by: None,
        acknowledged_until: None,
        resolved_at: None,
        resolved_by: None,
    };
    if status == AlertStatus::Acknowledged {
        alert.acknowledged_at = Some("2026-11-30T10:01:00.000Z".into());
        alert.acknowledged_by = Some("api:ops".into());
    }
    if status == AlertStatus::Resolved {
        alert.resolved_at = Some("2026-11-30T10:02:00.000Z".into());
        alert.resolved_by = Some("rule".into());
    }
    alert.notice_id = alert.notice_id();
    alert
}

/// Notices stored on either dialect: each once, in their lifecycle order,
/// `resolved` final.
async fn notices_are_stored_once_and_resolved_is_final(store: &Store) {
    use flowpulse_core::alert::AlertStatus::*;
    use flowpulse_plugins::stores::alerts::{history_len, statuses, store_notice};
    store.prepare().await.unwrap();
    let status = || async { statuses(store, &[ALERT_1.to_owned()]).await.unwrap()[0].status };
    store_notice(store, &notice(Triggered, 0)).await.unwrap();
    store_notice(store, &notice(Triggered, 0)).await.unwrap();
    assert_eq!(
        history_len(store, ALERT_1).await.unwrap(),
        1,
        "a notice stored twice adds one row"
    );
    assert_eq!(status().await, Triggered);
    store_notice(store, &notice(Acknowledged, 0)).await.unwrap();
    let stored = statuses(store, &[ALERT_1.to_owned()]).await.unwrap();
    assert_eq!(stored[0].status, Acknowledged);
    assert_eq!(stored[0].acknowledged_by.as_deref(), Some("api:ops"));
    // The first notice sent again (after a crash) must not undo the ack.
    store_notice(store, &notice(Triggered, 0)).await.unwrap();
    assert_eq!(
        status().await,
        Acknowledged,
        "a resent older notice changes nothing"
    );
    store_notice(store, &notice(Triggered, 1)).await.unwrap();
    assert_eq!(
        status().await,
        Triggered,
        "a repeat returns it to triggered"
    );
    let history = flowpulse_plugins::stores::alerts::history(store, ALERT_1)
        .await
        .unwrap();
    assert_eq!(
        history.last().map(|h| h.actor.as_str()),
        Some("expiry"),
        "an acknowledgement that ran out is recorded as expiry"
    );
    store_notice(store, &notice(Triggered, 0)).await.unwrap();
    assert_eq!(history_len(store, ALERT_1).await.unwrap(), 3);
    store_notice(store, &notice(Resolved, 1)).await.unwrap();
    store_notice(store, &notice(Triggered, 1)).await.unwrap();
    assert_eq!(status().await, Resolved, "resolved is final");
    assert_eq!(history_len(store, ALERT_1).await.unwrap(), 4);
    assert_eq!(
        count(store, "alert_rules").await,
        1,
        "the config rule's row was made"
    );

    // A new alert for an instance that still has an open one (the rules'
    // state lost it in a crash) supersedes it: never two open, never stuck.
    let mut first = notice(Triggered, 0);
    first.id = ALERT_2.into();
    first.notice_id = first.notice_id();
    store_notice(store, &first).await.unwrap();
    let mut second = notice(Triggered, 0);
    second.id = ALERT_3.into();
    second.notice_id = second.notice_id();
    store_notice(store, &second)
        .await
        .expect("a second open alert is not refused");
    let both = statuses(store, &[ALERT_2.to_owned(), ALERT_3.to_owned()])
        .await
        .unwrap();
    let status_of = |id: &str| both.iter().find(|s| s.id == id).unwrap().status;
    assert_eq!(status_of(ALERT_2), Resolved);
    assert_eq!(status_of(ALERT_3), Triggered);
    assert_eq!(
        history_len(store, ALERT_2).await.unwrap(),
        2,
        "its resolve is in its history"
    );
}

#[tokio::test]
async fn postgres_stores_notices_once_and_keeps_resolved_final() {
    let database = OwnDatabase::new("notices");
    let store = Store::new("main", &settings(database.url())).unwrap();
    notices_are_stored_once_and_resolved_is_final(&store).await;
    if let StorePool::Postgres(pool) = &store.pool {
        pool.close().await;
    }
}

#[tokio::test]
async fn sqlite_stores_notices_once_and_keeps_resolved_final() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let store = Store::new("main", &settings(url)).unwrap();
    notices_are_stored_once_and_resolved_is_final(&store).await;
}
