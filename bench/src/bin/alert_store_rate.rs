//! `alert_store` throughput: notices stored per second, one transaction
//! each (the sink's way), on SQLite and PostgreSQL.
//!
//! Usage: alert_store_rate [NOTICES] [POSTGRES_SERVER_URL]
//!        (default 5000 postgres://postgres@127.0.0.1:5432; a database
//!        `flowpulse_bench_PID` is created there and dropped after)

use std::time::{Duration, Instant};

use flowpulse_core::alert::{Alert, AlertStatus, Severity};
use flowpulse_core::config::StoreSettings;
use flowpulse_plugins::stores::alerts::store_notice;
use flowpulse_plugins::stores::{Store, StorePool};

fn settings(url: String) -> StoreSettings {
    StoreSettings {
        url,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
        retention: Duration::from_secs(90 * 24 * 3600),
    }
}

/// The i-th notice: a new alert of one of 100 instances, or a repeat.
fn notice(i: u64) -> Alert {
    let status = if i % 3 == 2 {
        AlertStatus::Resolved
    } else {
        AlertStatus::Triggered
    };
    let mut alert = Alert {
        id: uuid_like(i / 3),
        rule_id: "6f1c6c1e-7f5a-5b7e-8d3e-0a1b2c3d4e5f".into(),
        rule_name: "bench".into(),
        instance: format!("agent-{}", (i / 3) % 100),
        severity: Severity::Warning,
        status,
        message: "bench".into(),
        metric: "agents[x].success_rate_percent".into(),
        operator: "<".into(),
        threshold: 90.0,
        value: Some(80.0),
        data: serde_json::json!({"value": 80.0}),
        channels: vec!["dashboard".into()],
        runbook_url: None,
        muted: false,
        repeat: (i % 3).min(1) as u32,
        notice_id: String::new(),
        as_of: "2026-11-30T10:00:00.000Z".into(),
        created_at: "2026-11-30T10:00:00.000Z".into(),
        acknowledged_at: None,
        acknowledged_by: None,
        acknowledged_until: None,
        resolved_at: (status == AlertStatus::Resolved).then(|| "2026-11-30T10:05:00.000Z".into()),
        resolved_by: (status == AlertStatus::Resolved).then(|| "rule".into()),
    };
    alert.notice_id = alert.notice_id();
    alert
}

fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

async fn rate(store: &Store, n: u64) -> Result<f64, Box<dyn std::error::Error>> {
    store.prepare().await?;
    let start = Instant::now();
    for i in 0..n {
        store_notice(store, &notice(i)).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(5000), |a| a.parse())?;
    let server = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into());
    let dir = std::env::temp_dir().join(format!("flowpulse-bench-{}", std::process::id()));
    let sqlite = Store::new(
        "bench",
        &settings(format!("sqlite://{}/alerts.db", dir.display())),
    )?;
    let lite = rate(&sqlite, n).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let database = format!("flowpulse_bench_{}", std::process::id());
    let postgres = Store::new("bench", &settings(format!("{server}/{database}")))?;
    let pg = rate(&postgres, n).await;
    if let StorePool::Postgres(pool) = &postgres.pool {
        pool.close().await;
    }
    let _ = std::process::Command::new("psql")
        .arg(format!("{server}/postgres"))
        .arg("-qc")
        .arg(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .status();
    println!("alert_store, {n} notices, one transaction each:");
    println!("  SQLite (WAL):  {lite:.0} notices/s");
    println!("  PostgreSQL:    {:.0} notices/s", pg?);
    Ok(())
}
