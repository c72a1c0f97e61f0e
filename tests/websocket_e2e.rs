//! The `websocket` sink over real WebSocket connections on loopback
//! (CONTRACT §3). Timed checks run one at a time (`TIMED`), with margins.

mod common;

use std::time::{Duration, Instant};

use common::http_helpers::{start, write_config, Running};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Timed checks share two cores with everything else: one at a time.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn websocket_sink(extra: &str) -> String {
    format!(
        r#"[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"

[sinks.live]
type = "websocket"
inputs = ["metrics", "demo"]
address = "127.0.0.1:0"
{extra}
"#
    )
}

async fn connect(server: &Running) -> Socket {
    tokio_tungstenite::connect_async(server.ws_url("/ws/monitoring"))
        .await
        .unwrap()
        .0
}

/// The next text frame as JSON (pings are answered by the library).
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// The next frame of `kind`, skipping others.
async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let frame = next_json(socket).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Reads until the server closes; the close code, if a close frame came.
async fn close_code(socket: &mut Socket) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
    None
}

async fn status(server: &Running) -> Value {
    reqwest::get(server.url("/api/v1/monitoring/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_is_greeted_then_gets_the_newest_metrics_and_answers_to_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "300ms", &websocket_sink(""));
    let server = start(dir.path(), &config);
    // Let a document exist, so a new client gets it at once.
    let mut first = connect(&server).await;
    next_of(&mut first, "metrics:update").await;

    let mut socket = connect(&server).await;
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected");
    assert!(connected["client_id"].is_string());
    assert_eq!(connected["channels"], json!(["alerts", "metrics"]));
    assert_eq!(
        connected["available"],
        json!(["alerts", "events", "metrics"])
    );
    let update = next_json(&mut socket).await;
    assert_eq!(
        update["type"], "metrics:update",
        "the newest document at once"
    );
    assert!(update["data"]["history"].as_array().unwrap().len() <= 1);
    assert!(update["timestamp"].is_string());

    socket
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    next_of(&mut socket, "pong").await;

    for (bad, code) in [
        ("not json", "invalid_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"channels":["metrics"]}"#, "missing_field"),
        (r#"{"type":7}"#, "invalid_field"),
        (r#"{"type":"subscribe"}"#, "missing_field"),
        (
            r#"{"type":"subscribe","channels":"metrics"}"#,
            "invalid_field",
        ),
    ] {
        socket.send(Message::text(bad)).await.unwrap();
        let error = next_of(&mut socket, "error").await;
        assert_eq!(error["code"], code, "{bad}");
        assert!(error["message"].is_string());
    }
    // An unknown channel is an error; the known one in the same message applies.
    socket
        .send(Message::text(
            r#"{"type":"unsubscribe","channels":["metrics","weather"]}"#,
        ))
        .await
        .unwrap();
    let error = next_of(&mut socket, "error").await;
    assert_eq!(error["code"], "unknown_channel");
    let unsubscribed = next_of(&mut socket, "unsubscribed").await;
    assert_eq!(unsubscribed["channels"], json!(["alerts"]));
    socket
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    // Still open, and metrics no longer come: the pong is next.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let frame = next_json(&mut socket).await;
        assert_ne!(frame["type"], "metrics:update", "unsubscribed from metrics");
        if frame["type"] == "pong" {
            break;
        }
    }

    let live = &status(&server).await["components"]["live"];
    assert_eq!(
        live["messages_refused"], 7,
        "every refused message is counted: {live}"
    );

    // A message over 64 KiB closes with 1009.
    socket
        .send(Message::text(format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(65 * 1024)
        )))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1009));
    assert!(server.stop().success());
}

#[tokio::test]
async fn events_come_at_most_every_interval_sampled_with_what_was_dropped() {
    let _timed = TIMED.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // 4,000 events/s against at most 200 per 250 ms frame: a burst that
    // must be sampled, so `dropped` is exercised.
    let config = write_config(
        dir.path(),
        "workflows_in_flight = 2000",
        "1s",
        &websocket_sink(""),
    );
    let config_text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("rate = 200", "rate = 4000");
    std::fs::write(&config, config_text).unwrap();
    let server = start(dir.path(), &config);
    let mut socket = connect(&server).await;
    next_of(&mut socket, "connected").await;
    socket
        .send(Message::text(
            r#"{"type":"subscribe","channels":["events"]}"#,
        ))
        .await
        .unwrap();
    let subscribed = next_of(&mut socket, "subscribed").await;
    assert_eq!(
        subscribed["channels"],
        json!(["alerts", "events", "metrics"])
    );

    let start_at = Instant::now();
    let mut frames = 0;
    let mut dropped = 0;
    while start_at.elapsed() < Duration::from_secs(3) {
        let frame = next_of(&mut socket, "events").await;
        frames += 1;
        let events = frame["data"].as_array().unwrap();
        assert!(events.len() <= 200, "{}", events.len());
        assert!(events[0]["workflow_id"].is_string() && events[0]["type"].is_string());
        dropped += frame["dropped"].as_u64().unwrap();
    }
    let elapsed = start_at.elapsed().as_secs_f64();
    assert!(
        f64::from(frames) <= 4.0 * elapsed + 2.0,
        "{frames} frames in {elapsed:.1}s"
    );
    assert!(frames >= 4, "events kept coming: {frames}");
    assert!(dropped > 0, "a burst is sampled and counted as dropped");

    socket
        .send(Message::text(
            r#"{"type":"unsubscribe","channels":["events"]}"#,
        ))
        .await
        .unwrap();
    next_of(&mut socket, "unsubscribed").await;
    // One frame may already have been queued; after that, none.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut late_events = 0;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        socket.next(),
    )
    .await
    {
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "events" {
                late_events += 1;
            }
        }
    }
    assert_eq!(late_events, 0, "no events after unsubscribing");
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_as_too_slow_and_never_delays_a_fast_one() {
    let _timed = TIMED.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Large, frequent events frames fill the slow client's socket buffers
    // within seconds; then its queue stays full past the 1 s timeout.
    let config = write_config(
        dir.path(),
        "workflows_in_flight = 5000",
        "500ms",
        &websocket_sink(
            "slow_client_timeout = \"1s\"\nevents_interval = \"50ms\"\nevents_per_frame = 2000",
        ),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("rate = 200", "rate = 20000");
    std::fs::write(&config, text).unwrap();
    let server = start(dir.path(), &config);
    let pid = server.child.as_ref().unwrap().id();

    let mut fast = connect(&server).await;
    next_of(&mut fast, "connected").await;
    let mut slow = connect(&server).await;
    slow.send(Message::text(
        r#"{"type":"subscribe","channels":["events"]}"#,
    ))
    .await
    .unwrap();
    let rss_before = rss_kib(pid).unwrap_or(0);

    // The fast client gets every update within 1.5 intervals of its
    // emission while the slow one is stuffed and closed.
    let watch_until = Instant::now() + Duration::from_secs(12);
    let mut latencies = Vec::new();
    let mut slow_closed = false;
    while Instant::now() < watch_until {
        let update = next_of(&mut fast, "metrics:update").await;
        let emitted = flowpulse_core::event::parse_rfc3339_ms(
            update["data"]["last_update"].as_str().unwrap(),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        latencies.push(now - emitted);
        let live = &status(&server).await["components"]["live"];
        if live["slow_clients_closed"] == 1 {
            slow_closed = true;
            if latencies.len() >= 10 {
                break;
            }
        }
    }
    assert!(slow_closed, "the slow client was not closed");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = &status(&server).await["components"]["live"];
        if live["clients"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow client did not leave: {live}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let worst = latencies.iter().max().copied().unwrap_or(0);
    assert!(
        worst <= 750,
        "an update took {worst} ms to reach the fast client: {latencies:?}"
    );
    let rss_after = rss_kib(pid).unwrap_or(0);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(slow);
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_client_beyond_max_clients_is_refused_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "1s", &websocket_sink("max_clients = 2"));
    let server = start(dir.path(), &config);
    let _a = connect(&server).await;
    let _b = connect(&server).await;
    match tokio_tungstenite::connect_async(server.ws_url("/ws/monitoring")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_clients");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(server.stop().success());
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "300ms", &websocket_sink(""));
    let server = start(dir.path(), &config);
    let mut socket = connect(&server).await;
    next_of(&mut socket, "connected").await;
    let reader = tokio::spawn(async move { close_code(&mut socket).await });
    assert!(server.stop().success());
    assert_eq!(reader.await.unwrap(), Some(1001));
}

#[tokio::test]
async fn a_client_that_closes_gets_the_server_close_frame_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "300ms", &websocket_sink(""));
    let server = start(dir.path(), &config);
    let mut socket = connect(&server).await;
    next_of(&mut socket, "connected").await;
    socket
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "done".into(),
            },
        )))
        .await
        .unwrap();
    // A clean close: the server answers with a Close frame of its own
    // (the library echoes the code) before the connection ends.
    assert_eq!(close_code(&mut socket).await, Some(1000));
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_frame_far_over_the_limit_also_closes_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "1s", &websocket_sink(""));
    let server = start(dir.path(), &config);
    let mut socket = connect(&server).await;
    next_of(&mut socket, "connected").await;
    // 2 MiB: past the largest frame the server reads at all (1 MiB).
    let _ = socket
        .send(Message::text(format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(2 << 20)
        )))
        .await;
    assert_eq!(close_code(&mut socket).await, Some(1009));
    assert!(server.stop().success());
}

#[tokio::test]
async fn alert_notices_reach_clients_with_every_field_of_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = r#"[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
when_full = "drop_newest"

[[processors.alerts.rules]]
name = "Workflows exist"
severity = "info"
condition = { metric = "overview.total_workflows", operator = ">", value = 0 }
channels = ["dashboard"]
runbook_url = "https://runbooks.example/workflows"

[sinks.live]
type = "websocket"
inputs = ["metrics", "alerts"]
address = "127.0.0.1:0"
"#;
    let config = write_config(dir.path(), "", "300ms", sinks);
    let server = start(dir.path(), &config);
    let mut socket = connect(&server).await;
    next_of(&mut socket, "connected").await;
    let frame = next_of(&mut socket, "alert:triggered").await;
    let alert = &frame["data"];
    for field in [
        "id",
        "rule_id",
        "rule_name",
        "instance",
        "severity",
        "status",
        "message",
        "metric",
        "operator",
        "threshold",
        "value",
        "data",
        "channels",
        "runbook_url",
        "muted",
        "repeat",
        "notice_id",
        "as_of",
        "created_at",
        "acknowledged_at",
        "acknowledged_by",
        "acknowledged_until",
        "resolved_at",
        "resolved_by",
    ] {
        assert!(alert.get(field).is_some(), "alert.{field} missing: {alert}");
    }
    assert_eq!(alert["rule_name"], "Workflows exist");
    assert_eq!(alert["status"], "triggered");
    assert_eq!(alert["metric"], "overview.total_workflows");
    assert_eq!(alert["operator"], ">");
    assert_eq!(alert["repeat"], 0);
    assert_eq!(alert["channels"], json!(["dashboard"]));
    assert_eq!(alert["instance"], "");
    assert!(alert["value"].as_f64().unwrap() > 0.0);
    assert_eq!(alert["data"]["as_of"], alert["as_of"]);
    assert!(server.stop().success());
}

#[tokio::test]
async fn the_watchdog_fires_when_the_source_falls_silent() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, flat_event_lines(50, 4).join("\n") + "\n").unwrap();
    // A followed file stays open: the pipeline keeps running, silent.
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
data_dir = "{data}"

[sources.events]
type = "file"
path = "{events}"
follow = true

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "300ms"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[[processors.alerts.rules]]
name = "No events"
severity = "critical"
condition = {{ metric = "self.seconds_since_last_event", operator = ">", value = 2 }}
channels = ["dashboard"]

[sinks.live]
type = "websocket"
inputs = ["metrics", "alerts"]
address = "127.0.0.1:0"
"#,
            data = dir.path().join("data").display(),
            events = events.display()
        ),
    )
    .unwrap();
    let server = start(dir.path(), &config);
    let started = Instant::now();
    let mut socket = connect(&server).await;
    let fired = next_of(&mut socket, "alert:triggered").await;
    assert_eq!(fired["data"]["rule_name"], "No events");
    assert!(fired["data"]["value"].as_f64().unwrap() > 2.0);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the silence"
    );
    // Events again: the watchdog resolves.
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(&events)
        .unwrap();
    std::io::Write::write_all(
        &mut more,
        (flat_event_lines(5, 9).join("\n") + "\n").as_bytes(),
    )
    .unwrap();
    let resolved = next_of(&mut socket, "alert:resolved").await;
    assert_eq!(resolved["data"]["id"], fired["data"]["id"]);
    assert!(server.stop().success());
}
