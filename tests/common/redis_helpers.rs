//! Helpers for tests against the real Redis on loopback: keys of their own,
//! seeded events published to a stream, the cached document awaited.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub fn redis_url() -> String {
    std::env::var("FLOWPULSE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| {
            panic!("Redis must be reachable at {url} (scripts/test.sh starts it): {e}")
        })
}

/// A key prefix of this test's own, cleared first.
pub fn prefix(url: &str, test: &str) -> String {
    let prefix = format!("fp-test:{test}:{}", std::process::id());
    let mut conn = connection(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL").arg(key).query(&mut conn).unwrap();
    }
    prefix
}

/// XADDs seeded envelope events; returns the exact expected counts.
pub fn publish(url: &str, stream: &str, n: u64, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(binary())
        .args([
            "generate",
            "-n",
            &n.to_string(),
            "--seed",
            "17",
            "--in-flight",
            "300",
            "--expect",
        ])
        .args(extra)
        .args(["--redis-url", url, "--stream", stream])
        .output()
        .unwrap();
    assert_success(&output);
    serde_json::from_slice(&output.stderr).unwrap()
}

/// A pipeline `redis_stream` → `aggregate` → `redis_cache` on keys under
/// `prefix`, checkpointed in Redis every 200 ms.
pub fn config(dir: &Path, url: &str, prefix: &str, source_extra: &str) -> std::path::PathBuf {
    config_with(dir, url, prefix, source_extra, "")
}

/// [`config`] with extra options for the aggregate.
pub fn config_with(
    dir: &Path,
    url: &str,
    prefix: &str,
    source_extra: &str,
    aggregate_extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "{prefix}"
shutdown_deadline = "20s"

[checkpoint]
url = "{url}"
interval = "200ms"

[sources.events]
type = "redis_stream"
url = "{url}"
stream = "{prefix}:events"
block = "200ms"
claim_idle = "3s"
{source_extra}

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "300ms"
history = "0s"
{aggregate_extra}

[sinks.cache]
type = "redis_cache"
url = "{url}"
key = "{prefix}:metrics"
inputs = ["metrics"]
"#
        ),
    )
    .unwrap();
    path
}

pub fn cached_metrics(url: &str, key: &str) -> Option<serde_json::Value> {
    let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
    let text: Option<String> = redis::cmd("GET").arg(key).query(&mut conn).ok()?;
    serde_json::from_str(&text?).ok()
}

/// Waits until the cached document has exactly the expected counts.
pub fn wait_for_exact(
    url: &str,
    key: &str,
    expect: &serde_json::Value,
    limit: Duration,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(doc) = cached_metrics(url, key) {
            if matches_expectation(&doc, expect) {
                return doc;
            }
            if start.elapsed() > limit {
                panic!(
                    "counts never matched:\n{}\nexpected {expect}",
                    doc["overview"]
                );
            }
        } else if start.elapsed() > limit {
            panic!("no metrics in {key} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn spawn(dir: &Path, config: &Path) -> Child {
    run_command(dir, config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn stop(child: Child) -> std::process::Output {
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(30));
    assert_success(&output);
    output
}

/// Entries delivered to the `flowpulse` group and not acknowledged.
pub fn pending_count(conn: &mut redis::Connection, stream: &str) -> i64 {
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("flowpulse")
        .query(conn)
        .unwrap();
    match summary.first() {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a redis-server of the test's own on `port`, its files in `dir`.
/// `persistent`: every write is in its append-only file, so a restart keeps
/// the data; else a restart starts empty.
pub fn start_redis(dir: &Path, port: u16, persistent: bool) {
    let appendonly = if persistent { "yes" } else { "no" };
    let status = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--daemonize", "yes", "--save", ""])
        .args(["--appendonly", appendonly, "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .status()
        .expect("redis-server must be installed for this test");
    assert!(status.success());
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn shutdown_redis(port: u16) {
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "shutdown"])
        .status();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}
