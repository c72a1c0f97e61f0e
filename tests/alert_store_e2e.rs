//! `alert_store` through a database outage: PostgreSQL behind a TCP proxy
//! this test owns (the shared server is never stopped). Every notice the
//! rules made is stored once, in order, once the database is back, and
//! `/health` shows the outage while it lasts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::http_helpers::{start, write_config};
use common::proxy::Proxy;
use serde_json::Value;

fn server_url() -> String {
    common::proxy::database_url()
}

/// Runs SQL on the test's own database through psql; the rows, trimmed.
fn psql(database: &str, sql: &str) -> String {
    let base = server_url();
    let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
    let output = Command::new("psql")
        .arg(format!("{server}/{database}"))
        .args(["-Atc", sql])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Drops the test's database however the test ends.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(server_url())
            .arg("-qc")
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .output();
    }
}

async fn health(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn notices_made_during_a_database_outage_are_stored_once_when_it_returns() {
    let database = format!("flowpulse_test_outage_{}", std::process::id());
    let _cleanup = DropDatabase(database.clone());
    let proxy = Proxy::start(common::proxy::database_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    // Rules that fire one after another as workflows accumulate: some fire
    // while the database is up, more while it is down.
    let rules: String = (1..=12)
        .map(|k| {
            format!(
                "[[processors.alerts.rules]]\nname = \"over {n}\"\nseverity = \"info\"\n\
                 condition = {{ metric = \"overview.total_workflows\", operator = \">\", value = {n} }}\n\n",
                n = k * 15
            )
        })
        .collect();
    let sinks = format!(
        r#"[stores.main]
url = "postgres://postgres@{proxy}/{database}"
connect_timeout = "1s"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
        proxy = proxy.addr
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let health_url = server.url("/api/v1/monitoring/health");

    // The first alert stored: then the database goes away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(&database, "SELECT count(*) FROM alerts")
        .parse::<u32>()
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "no alert stored while the database was up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.down();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(&health_url).await;
        if h["healthy"] == false {
            assert!(
                h["checks"]["alert_db"]
                    .as_str()
                    .unwrap()
                    .contains("cannot reach"),
                "{h}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the outage never showed: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rules keep firing meanwhile; their notices wait in the buffer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status: Value = reqwest::get(server.url("/api/v1/monitoring/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        status["components"]["alert_db"]["buffered"]
            .as_i64()
            .unwrap()
            >= 1,
        "{}",
        status["components"]["alert_db"]
    );
    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&health_url).await["healthy"] != true {
        assert!(Instant::now() < deadline, "the outage never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let everything made so far be stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = server.stop();
    assert!(status.success());

    let alerts: u32 = psql(&database, "SELECT count(*) FROM alerts")
        .parse()
        .unwrap();
    let rows: u32 = psql(&database, "SELECT count(*) FROM alert_history")
        .parse()
        .unwrap();
    let notices: u32 = psql(
        &database,
        "SELECT count(DISTINCT notice_id) FROM alert_history",
    )
    .parse()
    .unwrap();
    assert!(alerts >= 3, "rules fired during the outage too: {alerts}");
    assert_eq!(rows, notices, "one history row per notice");
    assert_eq!(rows, alerts, "each alert's one notice, stored once");
    // In order: stored (history ids are serial) in the order the rules
    // fired, which is the order of their thresholds.
    let order = psql(
        &database,
        "SELECT r.name FROM alert_history h JOIN alerts a ON a.id = h.alert_id \
         JOIN alert_rules r ON r.id = a.rule_id ORDER BY h.id",
    );
    let thresholds: Vec<u32> = order
        .lines()
        .map(|name| name.trim_start_matches("over ").parse().unwrap())
        .collect();
    let mut sorted = thresholds.clone();
    sorted.sort();
    assert_eq!(thresholds, sorted, "stored in the order they fired");
}

/// Publishes `n` workflow-created events (envelope form) to `stream`,
/// `per_second` of them a second, from a thread of its own.
fn publish_slowly(
    url: String,
    stream: String,
    n: usize,
    per_second: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = common::redis_helpers::connection(&url);
        let started = Instant::now();
        for i in 0..n {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let payload = serde_json::json!({
                "key": format!("wf-{i}"),
                "msg": {
                    "message_id": format!("created-{i}"),
                    "metadata": {"stage": "orchestrator:workflow:created",
                                 "timestamp": flowpulse_core::event::format_rfc3339_ms(now_ms)},
                    "payload": {"workflow_id": format!("wf-{i}"), "workflow_type": "feature"}
                }
            });
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("topic")
                .arg("workflow:events")
                .arg("payload")
                .arg(payload.to_string())
                .query(&mut conn)
                .unwrap();
            let due = started + Duration::from_micros(1_000_000 * (i as u64 + 1) / per_second);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    })
}

#[tokio::test]
async fn kill_9_at_random_points_neither_loses_nor_doubles_an_alert() {
    use flowpulse_plugins::stores::alerts::open;
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("alerts.db");
    let url = common::redis_helpers::redis_url();
    let prefix = common::redis_helpers::prefix(&url, "kill9");
    let stream = format!("{prefix}:events");
    // Workflows arrive 200 a second on a durable stream; a rule per 20 of
    // them, so alerts keep firing across every crash and restart. Positions
    // and state are checkpointed: nothing may be lost or counted twice.
    let rules: String = (1..=30)
        .map(|k| {
            format!(
                "[[processors.alerts.rules]]\nname = \"over {n}\"\nseverity = \"info\"\n\
                 condition = {{ metric = \"overview.total_workflows\", operator = \">\", value = {n} }}\n\n",
                n = k * 20
            )
        })
        .collect();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "kill9"
data_dir = "{data}"

[checkpoint]
url = "file://{checkpoints}"
interval = "1s"

[stores.main]
url = "sqlite://{db}"

[sources.events]
type = "redis_stream"
url = "{url}"
stream = "{stream}"
group = "kill9"
consumer = "only"
block = "50ms"

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "100ms"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
            data = dir.path().join("data").display(),
            checkpoints = dir.path().join("checkpoints").display(),
            db = db.display()
        ),
    )
    .unwrap();
    let store = flowpulse_plugins::stores::Store::new(
        "main",
        &flowpulse_core::config::StoreSettings {
            url: format!("sqlite://{}", db.display()),
            max_connections: 1,
            connect_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let publisher = publish_slowly(url.clone(), stream.clone(), 700, 200);
    // Crashes right after a new alert is stored: the moment its firing may
    // be in the store but not yet in a checkpoint of the rules' state.
    let mut rng = rand::rng();
    let mut stored = 0;
    for _ in 0..5 {
        let mut server = start(dir.path(), &config);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = if store.is_ready() || store.prepare().await.is_ok() {
                open(&store).await.map(|a| a.len()).unwrap_or(stored)
            } else {
                stored
            };
            if now > stored || Instant::now() > deadline {
                stored = now;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
        let mut child = server.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL: no drain, no final checkpoint
        child.wait().unwrap();
    }
    publisher.join().unwrap();
    let server = start(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts = open(&store).await.unwrap();
        if alerts.len() >= 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 30 alerts stored",
            alerts.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let anything still in flight land before checking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.stop().success());
    let all = flowpulse_plugins::stores::alerts::list(
        &store,
        &flowpulse_plugins::stores::alerts::AlertFilter {
            limit: 500,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .0;
    let mut per_rule: std::collections::BTreeMap<String, usize> = Default::default();
    for alert in &all {
        *per_rule.entry(alert.rule_name.clone()).or_default() += 1;
        let history = flowpulse_plugins::stores::alerts::history(&store, &alert.id)
            .await
            .unwrap();
        let steps: Vec<(&str, Option<&str>)> = history
            .iter()
            .map(|h| (h.to_status.as_str(), h.comment.as_deref()))
            .collect();
        assert_eq!(
            steps,
            [("triggered", None)],
            "{}: {steps:?}",
            alert.rule_name
        );
        assert_eq!(alert.status, flowpulse_core::alert::AlertStatus::Triggered);
    }
    assert_eq!(
        per_rule.len(),
        30,
        "every threshold crossed has its alert: {per_rule:?}"
    );
    assert!(
        per_rule.values().all(|n| *n == 1),
        "no alert opened twice: {per_rule:?}"
    );
}

#[tokio::test]
async fn a_database_down_at_start_is_an_outage_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let sinks = format!(
        r#"[stores.main]
url = "postgres://postgres@127.0.0.1:{port}/flowpulse"
connect_timeout = "1s"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[[processors.alerts.rules]]
name = "any"
severity = "info"
condition = {{ metric = "overview.total_workflows", operator = ">", value = 0 }}

[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
store = "main"
"#
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let health_url = server.url("/api/v1/monitoring/health");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(&health_url).await;
        if h["healthy"] == false {
            assert!(
                h["checks"]["alert_db"]
                    .as_str()
                    .unwrap()
                    .contains("cannot reach"),
                "{h}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the outage never showed: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alerts = reqwest::get(server.url("/api/v1/monitoring/alerts"))
        .await
        .unwrap();
    assert_eq!(
        alerts.status(),
        503,
        "the alert routes say the store is unreachable"
    );
    let body: Value = alerts.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    // Still running: metrics are served.
    let realtime = reqwest::get(server.url("/api/v1/monitoring/metrics/realtime"))
        .await
        .unwrap();
    assert_eq!(realtime.status(), 200);
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_stored_rule_edited_by_hand_into_an_invalid_one_is_skipped_and_shown() {
    let database = format!("flowpulse_test_handedit_{}", std::process::id());
    let _cleanup = DropDatabase(database.clone());
    let base = server_url();
    let server_part = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
    let dir = tempfile::tempdir().unwrap();
    let token = "hand-edit-test-token-0123456789";
    let sinks = format!(
        r#"[stores.main]
url = "{server_part}/{database}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
store = "main"
token = "{token}"
"#
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    // 503 until the store is ready (its database is created at start).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let created = http
            .post(server.url("/api/v1/monitoring/rules"))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "name": "made over the API",
                "severity": "info",
                "condition": {"metric": "overview.total_workflows", "operator": ">", "value": 1_000_000},
                "channels": ["dashboard"]
            }))
            .send()
            .await
            .unwrap();
        if created.status() == 201 {
            break;
        }
        assert_eq!(created.status(), 503);
        assert!(Instant::now() < deadline, "the store never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Someone edits the row to name a channel no sink has.
    psql(
        &database,
        "UPDATE alert_rules SET channels = '[\"pager-that-was-removed\"]' WHERE name = 'made over the API'",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Value = reqwest::get(server.url("/api/v1/monitoring/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alerts = &status["components"]["alerts"];
        if alerts["invalid_stored_rules"] == 1 {
            let error = alerts["last_error"].as_str().unwrap_or("");
            assert!(
                error.contains("made over the API") && error.contains("pager-that-was-removed"),
                "{alerts}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never skipped: {alerts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log_lines().join("\n");
    assert_eq!(
        log.matches("skipping a stored rule that no longer validates")
            .count(),
        1,
        "logged once"
    );
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_rule_removed_from_the_config_is_disabled_in_postgres_not_deleted() {
    let database = format!("flowpulse_test_removed_rule_{}", std::process::id());
    let _cleanup = DropDatabase(database.clone());
    let base = server_url();
    let server_part = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
    let dir = tempfile::tempdir().unwrap();
    let rule = |name: &str| {
        format!(
            r#"
[[processors.alerts.rules]]
name = "{name}"
severity = "info"
condition = {{ metric = "overview.total_workflows", operator = ">", value = 1000000000 }}
"#
        )
    };
    let sinks = |rules: &str| {
        format!(
            r#"[stores.main]
url = "{server_part}/{database}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"
{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
store = "main"
"#
        )
    };
    let rules_in_store = || {
        psql(
            &database,
            "SELECT name || '=' || enabled FROM alert_rules ORDER BY name",
        )
    };
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = rules_in_store().replace('\n', ",");
            if rows == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rules in the store: {rows}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let config = write_config(
        dir.path(),
        "",
        "200ms",
        &sinks(&(rule("kept") + &rule("removed"))),
    );
    let server = start(dir.path(), &config);
    wait_for("kept=true,removed=true");
    assert!(server.stop().success());

    // The same pipeline without one of its rules.
    let config = write_config(dir.path(), "", "200ms", &sinks(&rule("kept")));
    let server = start(dir.path(), &config);
    wait_for("kept=true,removed=false");
    let log = server.log_lines().join("\n");
    assert!(
        !log.contains("cannot write the config's rules"),
        "the config's rules were not written: {log}"
    );
    assert!(server.stop().success());
}
