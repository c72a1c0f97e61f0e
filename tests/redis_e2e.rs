//! Redis end to end against the real server: the stream source, the cache
//! sink, dead letters, exact restarts after SIGKILL, a Redis restart, and a
//! dead consumer's entries taken over.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpulse_core::checkpoint::CheckpointStore;

use common::redis_helpers::*;
use common::*;

#[test]
fn envelopes_with_duplicates_and_malformed_entries_give_exact_counts_and_dead_letters() {
    let url = redis_url();
    let prefix = prefix(&url, "exact");
    let expect = publish(
        &url,
        &format!("{prefix}:events"),
        20_000,
        &["--duplicates", "0.05", "--malformed", "0.01"],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, &prefix, "");
    let child = spawn(dir.path(), &config);
    let doc = wait_for_exact(
        &url,
        &format!("{prefix}:metrics"),
        &expect,
        Duration::from_secs(60),
    );
    let output = stop(child);
    assert_eq!(doc["anomalies"], 0);

    let mut conn = connection(&url);
    let dead: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:events:dead"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(dead.len() as u64, expect["malformed"].as_u64().unwrap());
    let first = format!("{:?}", dead[0]);
    for field in ["original_id", "reason", "delivery_count", "payload"] {
        assert!(first.contains(field), "{first}");
    }
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:metrics"))
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 0 && ttl <= 300, "ttl {ttl}");
    // Every entry was acknowledged.
    assert_eq!(pending_count(&mut conn, &format!("{prefix}:events")), 0);
    let summaries = summaries(&output.stderr);
    assert_eq!(
        counter(&summaries, "events", "malformed"),
        expect["malformed"].as_u64().unwrap()
    );
}

#[test]
fn sigkill_at_random_points_then_restart_gives_the_exact_answer() {
    let url = redis_url();
    let prefix = prefix(&url, "kill");
    let expect = publish(
        &url,
        &format!("{prefix}:events"),
        60_000,
        &["--duplicates", "0.05"],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, &prefix, "batch_size = 200");
    // A fixed sequence of kill points, spread over the run.
    for delay_ms in [350u64, 900, 200, 1300, 600] {
        let mut child = spawn(dir.path(), &config);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let child = spawn(dir.path(), &config);
    let doc = wait_for_exact(
        &url,
        &format!("{prefix}:metrics"),
        &expect,
        Duration::from_secs(90),
    );
    stop(child);
    assert_eq!(doc["anomalies"], 0);
}

#[test]
fn redis_restarted_mid_stream_still_gives_exact_counts() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    start_redis(data.path(), port, true);
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = "restart".to_owned();
    let expect = publish(
        &url,
        &format!("{prefix}:events"),
        60_000,
        &["--duplicates", "0.05"],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, &prefix, "batch_size = 200");
    let child = spawn(dir.path(), &config);
    std::thread::sleep(Duration::from_millis(700));
    shutdown_redis(port);
    std::thread::sleep(Duration::from_millis(1500));
    start_redis(data.path(), port, true);
    let result = std::panic::catch_unwind(|| {
        wait_for_exact(
            &url,
            &format!("{prefix}:metrics"),
            &expect,
            Duration::from_secs(90),
        )
    });
    let output = stop(child);
    shutdown_redis(port);
    let doc = result.unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(doc["anomalies"], 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The outage is logged once per component, not per attempt.
    assert!(stderr.matches("cannot reach").count() <= 3, "{stderr}");
}

#[test]
fn a_dead_consumers_pending_entries_are_claimed_processed_and_acked() {
    let url = redis_url();
    let prefix = prefix(&url, "claim");
    let stream = format!("{prefix}:events");
    let expect = publish(&url, &stream, 2_000, &[]);
    let mut conn = connection(&url);
    // A consumer takes every entry and dies without acking.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("flowpulse")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    let taken: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("flowpulse")
        .arg("dead")
        .arg("COUNT")
        .arg(10_000)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert!(format!("{taken:?}").len() > 1000);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, &prefix, "consumer = \"alive\"");
    let child = spawn(dir.path(), &config);
    wait_for_exact(
        &url,
        &format!("{prefix}:metrics"),
        &expect,
        Duration::from_secs(60),
    );
    let output = stop(child);
    assert_eq!(pending_count(&mut conn, &stream), 0);
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("took over every entry pending in the group"));
}

/// The pipeline is slower than the reads (100 ms a batch of 100), so
/// batches wait in the source's read-ahead buffer longer than `claim_idle`
/// (1 s; claims are tried every half of it): they are this consumer's,
/// not abandoned, and no claim sends them a second time. Every entry
/// reaches the file once.
#[test]
fn entries_waiting_in_the_read_ahead_buffer_are_not_claimed_back() {
    let url = redis_url();
    let prefix = prefix(&url, "read-ahead");
    let stream = format!("{prefix}:events");
    publish(&url, &stream, 3_000, &[]);
    let mut conn = connection(&url);
    let entries: u64 = redis::cmd("XLEN").arg(&stream).query(&mut conn).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
data_dir = "data"

[sources.events]
type = "redis_stream"
url = "{url}"
stream = "{stream}"
consumer = "only"
batch_size = 100
block = "100ms"
claim_idle = "1s"
stop_after_idle = "2s"

[processors.slow]
type = "passthrough"
inputs = ["events"]
delay_per_batch = "100ms"

[sinks.out]
type = "file"
inputs = ["slow"]
path = "out.jsonl"
"#
        ),
    )
    .unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
    assert_success(&output);
    let lines = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(lines.len() as u64, entries, "sent twice or lost");
    assert_eq!(pending_count(&mut conn, &stream), 0);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("claimed entries"));
}

#[test]
fn acl_user_and_password_work_and_never_appear_in_logs() {
    let url = redis_url();
    let mut admin = connection(&url);
    let user = format!("fp-acl-{}", std::process::id());
    let password = "s3cret-Pa55word";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut admin)
        .unwrap();
    let authed = url.replacen("redis://", &format!("redis://{user}:{password}@"), 1);
    let prefix = prefix(&url, "acl");
    let expect = publish(&authed, &format!("{prefix}:events"), 3_000, &[]);
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), &authed, &prefix, "stop_after_idle = \"1s\"");
    let output = run_to_end(dir.path(), &good, Duration::from_secs(60));
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut admin)
        .unwrap();
    assert_success(&output);
    let doc = cached_metrics(&url, &format!("{prefix}:metrics")).unwrap();
    assert!(matches_expectation(&doc, &expect), "{}", doc["overview"]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains(password));

    // A wrong password is reported without it.
    let wrong = url.replacen("redis://", &format!("redis://{user}:wrong-{password}@"), 1);
    let bad = config(dir.path(), &wrong, &prefix, "stop_after_idle = \"1s\"");
    let output = run_to_end(dir.path(), &bad, Duration::from_secs(60));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach the checkpoint store redis://{user}:***@"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(password), "{stderr}");
}

#[test]
fn rediss_urls_connect_over_tls() {
    let data = tempfile::tempdir().unwrap();
    let generated = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(data.path().join("key.pem"))
        .arg("-out")
        .arg(data.path().join("cert.pem"))
        .output()
        .expect("openssl must be installed for this test");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let port = free_port();
    let status = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--save",
            "",
            "--tls-auth-clients",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(data.path().join("cert.pem"))
        .arg("--tls-key-file")
        .arg(data.path().join("key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(data.path().join("cert.pem"))
        .arg("--dir")
        .arg(data.path())
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server (TLS) did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The test's certificate is self-signed: skip verification, not encryption.
    let url = format!("rediss://127.0.0.1:{port}/#insecure");
    let expect = publish(&url, "tls:events", 2_000, &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, "tls", "stop_after_idle = \"1s\"");
    let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
    let doc = cached_metrics(&url, "tls:metrics");
    let _ = Command::new("redis-cli")
        .args([
            "--tls",
            "--insecure",
            "-p",
            &port.to_string(),
            "shutdown",
            "nosave",
        ])
        .status();
    assert_success(&output);
    let doc = doc.expect("metrics written over TLS");
    assert!(matches_expectation(&doc, &expect), "{}", doc["overview"]);
}

/// A checkpoint larger than one write command (here ~2.5 MB, about ten
/// commands) is staged in pieces and renamed into place: what loads is
/// exactly what was saved, pieces joined across command borders, and no
/// staging key is left. A small one then replaces it whole.
#[tokio::test]
async fn a_large_checkpoint_is_written_in_pieces_and_replaced_whole() {
    let url = redis_url();
    let key = format!("{}:checkpoint", prefix(&url, "chunked-save"));
    let store = flowpulse_plugins::checkpoint::open(&url).await.unwrap();
    let header = vec![7u8; 1000];
    let body: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let tail = b"end".to_vec();
    store.save(&key, b"old").await.unwrap();
    store
        .save_joined(&key, &[&header, &body, &tail])
        .await
        .unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.len(), header.len() + body.len() + tail.len());
    assert!(loaded == [header, body, tail].concat(), "bytes differ");
    let staging: bool = redis::cmd("EXISTS")
        .arg(format!("{key}:writing"))
        .query(&mut connection(&url))
        .unwrap();
    assert!(!staging, "the staging key was left behind");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut connection(&url))
        .unwrap();
    assert_eq!(ttl, -1, "the checkpoint kept the stage's expiry");
    store.save(&key, b"small").await.unwrap();
    assert_eq!(
        store.load(&key).await.unwrap().as_deref(),
        Some(&b"small"[..])
    );
    store.delete(&key).await.unwrap();
}

/// A crash between staging a large value and renaming it leaves the stage
/// behind, named for a part id that may never be written again: it must
/// expire, and listings (which `sweep` and `state reset` use) must not take
/// it for a checkpoint. The value is 40 MB, 160 staged chunks, so the write
/// is still staging when the test sees the stage and aborts it.
#[tokio::test]
async fn an_abandoned_stage_expires_and_is_not_listed() {
    let url = redis_url();
    let key = format!("{}:checkpoint:part:7", prefix(&url, "abandoned-stage"));
    let stage = format!("{key}:writing");
    let store = flowpulse_plugins::checkpoint::open(&url).await.unwrap();
    store.save(&key, b"old").await.unwrap();
    let mut conn = connection(&url);
    let writer = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let body = vec![5u8; 40 << 20];
            store.save_joined(&key, &[&body]).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staged: bool = redis::cmd("EXISTS").arg(&stage).query(&mut conn).unwrap();
        if staged {
            break;
        }
        assert!(
            !writer.is_finished(),
            "the write finished before a stage was seen"
        );
        assert!(Instant::now() < deadline, "no stage appeared");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.abort();
    let _ = writer.await;
    let ttl: i64 = redis::cmd("PTTL").arg(&stage).query(&mut conn).unwrap();
    assert!(ttl > 0, "an abandoned stage never expires (PTTL {ttl})");
    assert_eq!(
        store.load(&key).await.unwrap().as_deref(),
        Some(&b"old"[..]),
        "an aborted write replaced the checkpoint"
    );
    let parts = key.trim_end_matches('7');
    let listed = store.keys_with_prefix(parts).await.unwrap();
    assert_eq!(
        listed,
        vec![key.clone()],
        "a stage was listed as a checkpoint"
    );
    store.delete(&key).await.unwrap();
    redis::cmd("DEL")
        .arg(&stage)
        .query::<()>(&mut conn)
        .unwrap();
}

/// The fencing every checkpoint store gives a partition's owners: the
/// first token is 1, each take is the next, and a write or deletion under
/// any token but the latest is refused, leaving the value as the owner
/// wrote it. Values over the Redis store's 256 KiB chunk take its staged
/// path, whose stage is named for the token so a stale owner's stage never
/// mixes into the owner's.
async fn fencing_holds(store: Arc<dyn CheckpointStore>, key: &str) {
    use flowpulse_core::checkpoint::{fence_key, Fence, StoreError};
    let fence = fence_key(key);
    assert_eq!(store.fence_of(&fence).await.unwrap(), 0);
    let old = Fence {
        key: fence.clone(),
        token: store.take_fence(&fence).await.unwrap(),
    };
    assert_eq!(old.token, 1);
    store.save_fenced(&old, key, &[b"one"]).await.unwrap();
    let new = Fence {
        key: fence.clone(),
        token: store.take_fence(&fence).await.unwrap(),
    };
    assert_eq!(new.token, 2);
    assert_eq!(store.fence_of(&fence).await.unwrap(), 2);
    let large = vec![7u8; 600 << 10];
    for value in [&b"stale"[..], &large[..]] {
        match store.save_fenced(&old, key, &[value]).await {
            Err(StoreError::Fenced {
                token: 1,
                current: 2,
            }) => {}
            other => panic!("a stale owner's write was not refused: {other:?}"),
        }
    }
    assert!(matches!(
        store.delete_fenced(&old, key).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(store.load(key).await.unwrap().as_deref(), Some(&b"one"[..]));
    store
        .save_fenced(&new, key, &[&large[..4], &large])
        .await
        .unwrap();
    assert_eq!(
        store.load(key).await.unwrap().map(|v| v.len()),
        Some(large.len() + 4)
    );
    assert_eq!(
        store.keys_with_prefix(key).await.unwrap().len(),
        2,
        "the value and its fence, and no stage: {:?}",
        store.keys_with_prefix(key).await.unwrap()
    );
    store.delete_fenced(&new, key).await.unwrap();
    assert_eq!(store.load(key).await.unwrap(), None);
    store.delete(&fence).await.unwrap();
}

#[tokio::test]
async fn the_redis_store_refuses_a_stale_owner() {
    let url = redis_url();
    let key = format!("{}:checkpoint:3", prefix(&url, "fencing"));
    let store = flowpulse_plugins::checkpoint::open(&url).await.unwrap();
    fencing_holds(store, &key).await;
}

#[tokio::test]
async fn the_file_store_refuses_a_stale_owner() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = flowpulse_plugins::checkpoint::open(&url).await.unwrap();
    fencing_holds(store, "flowpulse:checkpoint:p:metrics:3").await;
}

/// The lease every checkpoint store gives instances taking turns: free or
/// its owner's, it is taken (or renewed); another's, its owner is named;
/// only its owner gives it up; once it lapses another takes it.
async fn lease_holds(store: Arc<dyn CheckpointStore>, key: &str) {
    let ttl = Duration::from_millis(300);
    assert_eq!(store.lease(key, "a", ttl).await.unwrap(), None);
    assert_eq!(
        store.lease(key, "b", ttl).await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(store.lease(key, "a", ttl).await.unwrap(), None, "renewed");
    store.release_lease(key, "b").await.unwrap();
    assert_eq!(
        store.lease(key, "b", ttl).await.unwrap().as_deref(),
        Some("a")
    );
    store.release_lease(key, "a").await.unwrap();
    assert_eq!(store.lease(key, "b", ttl).await.unwrap(), None, "given up");
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(store.lease(key, "a", ttl).await.unwrap(), None, "lapsed");
    store.release_lease(key, "a").await.unwrap();
}

#[tokio::test]
async fn the_redis_and_file_stores_lease_to_one_owner_at_a_time() {
    let url = redis_url();
    let key = format!("{}:lease", prefix(&url, "store-lease"));
    lease_holds(
        flowpulse_plugins::checkpoint::open(&url).await.unwrap(),
        &key,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = format!("file://{}", dir.path().display());
    lease_holds(
        flowpulse_plugins::checkpoint::open(&file).await.unwrap(),
        "flowpulse:lease:p:alerts",
    )
    .await;
}

/// `flowpulse state` on `config`, run from `dir`.
fn state_command(
    dir: &std::path::Path,
    config: &std::path::Path,
    action: &str,
) -> std::process::Output {
    Command::new(binary())
        .args(["state", action, "-c"])
        .arg(config)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A reader holding the group's lease (here a key set by hand, as a reader
/// on another machine would hold it) would write its state straight back:
/// `state reset` refuses, says who holds it, and deletes nothing; once the
/// lease is gone it resets.
#[test]
fn state_reset_refuses_while_a_reader_holds_the_groups_lease() {
    let url = redis_url();
    let prefix = prefix(&url, "reset-lease");
    publish(&url, &format!("{prefix}:events"), 500, &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &url,
        &prefix,
        "group = \"readers\"\nstop_after_idle = \"1s\"",
    );
    assert_success(&run_to_end(dir.path(), &config, Duration::from_secs(60)));
    let checkpoint = format!("flowpulse:checkpoint:{prefix}:metrics:0");
    let shown =
        String::from_utf8_lossy(&state_command(dir.path(), &config, "show").stdout).into_owned();
    assert!(shown.contains("500 events folded"), "{shown}");

    let lease = format!("flowpulse:lease:readers:{prefix}:events");
    let mut conn = connection(&url);
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("00ff:elsewhere-1")
        .arg("PX")
        .arg(60_000)
        .query(&mut conn)
        .unwrap();
    let refused = state_command(dir.path(), &config, "reset");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("nothing deleted"), "{stderr}");
    assert!(stderr.contains("consumer \"elsewhere-1\""), "{stderr}");
    assert!(stderr.contains(&lease), "{stderr}");
    // `--force` overrides only a source that cannot say, never a reader.
    let forced = Command::new(binary())
        .args(["state", "reset", "--force", "-c"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        !forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let shown =
        String::from_utf8_lossy(&state_command(dir.path(), &config, "show").stdout).into_owned();
    assert!(
        shown.contains(&checkpoint) && shown.contains("500 events folded"),
        "{shown}"
    );

    let _: () = redis::cmd("DEL").arg(&lease).query(&mut conn).unwrap();
    let reset = state_command(dir.path(), &config, "reset");
    assert_success(&reset);
    let shown =
        String::from_utf8_lossy(&state_command(dir.path(), &config, "show").stdout).into_owned();
    assert!(shown.contains("no checkpoint"), "{shown}");
}
