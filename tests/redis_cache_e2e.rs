//! `redis_cache` against a real Redis of its own, on a free port, that goes
//! down mid-run: what it could not write is counted, and once Redis is back
//! the newest document is written.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis_helpers::*;
use common::*;

fn key_exists(url: &str, key: &str) -> bool {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return false;
    };
    redis::cmd("EXISTS")
        .arg(key)
        .query::<bool>(&mut conn)
        .unwrap_or(false)
}

fn wait_for_key(url: &str, key: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if key_exists(url, key) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn writes_that_fail_during_an_outage_are_counted_and_the_newest_is_written_after() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    start_redis(data.path(), port, false);
    let url = format!("redis://127.0.0.1:{port}");
    let key = "fp-test:cache:metrics";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sources.events]
type = "demo"
rate = 200
seed = 3

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "200ms"
history = "0s"

[sinks.cache]
type = "redis_cache"
url = "{url}"
key = "{key}"
inputs = ["metrics"]
"#
        ),
    )
    .unwrap();
    let child = run_command(dir.path(), &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let written_before = wait_for_key(&url, key, Duration::from_secs(15));
    shutdown_redis(port);
    // About ten documents come and cannot be written.
    std::thread::sleep(Duration::from_secs(2));
    start_redis(data.path(), port, false);
    let written_after = wait_for_key(&url, key, Duration::from_secs(15));
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(30));
    shutdown_redis(port);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_success(&output);
    assert!(written_before && written_after, "{stderr}");
    let summaries = summaries(&output.stderr);
    // Not only the first failure, which the runtime logs: every one.
    assert!(
        counter(&summaries, "cache", "errors") >= 2,
        "{summaries:#?}"
    );
    // Documents replaced by newer ones while Redis was down were never written.
    assert!(
        counter(&summaries, "cache", "dropped") >= 1,
        "{summaries:#?}"
    );
    // The outage itself is logged once.
    assert_eq!(stderr.matches("cannot reach").count(), 1, "{stderr}");
}
