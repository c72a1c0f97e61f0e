//! The dashboard over one hour of updates replayed 60 times faster, in
//! headless Chromium: JS heap and DOM nodes after a forced garbage
//! collection at 10 simulated minutes and at the end, and the p99 time to
//! render one update. Run by `bench/dashboard_memory.sh`.
//!
//! Usage: dashboard_memory FLOWPULSE_BINARY [SIMULATED_MINUTES]   (default 60)
//!
//! The pipeline: a followed file of events whose timestamps advance 60 s
//! per wall second (50 events per second of event time, the demo's default
//! rate, with its incidents: agents fail for a while, so alerts fire and
//! resolve), `aggregate` every 83 ms (5 s / 60) with 10 s of history,
//! `alert_rules`, and `rest` + `websocket` (`events_interval` 10 ms, its
//! floor; 250 ms / 60 would be 4 ms). The page has its events panel open.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use flowpulse_plugins::sources::demo::generator::{WorkloadConfig, WorkloadGenerator};
use serde_json::{json, Value};

const SPEEDUP: i64 = 60;
const EVENTS_PER_SECOND: f64 = 50.0;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn sample(c: &fantoccini::Client) -> (f64, u64) {
    let v = c
        .execute(
            "window.gc(); window.gc(); return [performance.memory.usedJSHeapSize, document.getElementsByTagName('*').length];",
            vec![],
        )
        .await
        .expect("measure");
    (v[0].as_f64().unwrap_or(0.0), v[1].as_u64().unwrap_or(0))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .expect("usage: dashboard_memory FLOWPULSE_BINARY [MINUTES]");
    let minutes: i64 = args.next().map_or(60, |m| m.parse().expect("minutes"));
    let dir = tempfile_dir();
    let events = dir.join("events.jsonl");
    std::fs::write(&events, "").expect("events file");
    let config = dir.join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "dashboard-memory"
data_dir = "{data}"

[sources.events]
type = "file"
path = "{events}"
follow = true
poll_interval = "20ms"

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "83ms"
history = "10s"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[[processors.alerts.rules]]
name = "Agent failing"
severity = "warning"
condition = {{ metric = "agents.*.success_rate_percent", operator = "<", value = 80 }}
channels = ["dashboard"]

[[processors.alerts.rules]]
name = "Errors in the last minute"
severity = "critical"
condition = {{ metric = "window.1m.error_rate_percent", operator = ">", value = 12 }}
channels = ["dashboard"]

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
dashboard = true

[sinks.live]
type = "websocket"
inputs = ["metrics", "alerts", "events"]
address = "127.0.0.1:0"
events_interval = "10ms"
"#,
            data = dir.join("data").display(),
            events = events.display()
        ),
    )
    .expect("config");
    let mut flowpulse = Command::new(&binary)
        .args(["--log-format", "json", "run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flowpulse");
    let stderr = flowpulse.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "listening" {
                    let _ = tx.send(v["fields"]["address"].as_str().unwrap_or("").to_owned());
                }
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("flowpulse listening");

    let port = free_port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--enable-precise-memory-info", "--js-flags=--expose-gc",
                     format!("--user-data-dir={}", dir.join("profile").display())]
        }),
    );
    let c = ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    c.goto(&format!("http://{address}/"))
        .await
        .expect("open the page");
    c.find(Locator::Css("#events-panel summary"))
        .await
        .expect("events panel")
        .click()
        .await
        .expect("open it");

    // Events: event time starts `minutes` ago and advances 60 s per wall second.
    let start_event_ms = now_ms() - minutes * 60_000;
    let mut generator = WorkloadGenerator::new(WorkloadConfig {
        seed: 7,
        start_ms: start_event_ms,
        rate: EVENTS_PER_SECOND,
        ..WorkloadConfig::default()
    })
    .peekable();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&events)
        .expect("append");
    let started = Instant::now();
    let wall_total = Duration::from_secs((minutes * 60 / SPEEDUP) as u64);
    let mut samples: Vec<(i64, f64, u64)> = Vec::new();
    let mut next_sample = 0i64;
    loop {
        let elapsed = started.elapsed();
        let event_now = start_event_ms + elapsed.as_millis() as i64 * SPEEDUP;
        let mut buf = String::new();
        while generator
            .peek()
            .is_some_and(|e| e.timestamp_ms <= event_now)
        {
            if let Some(e) = generator.next() {
                buf.push_str(&serde_json::to_string(&e).expect("event"));
                buf.push('\n');
            }
        }
        file.write_all(buf.as_bytes()).expect("write events");
        let simulated_min = elapsed.as_secs() as i64 * SPEEDUP / 60;
        if simulated_min >= next_sample {
            let (heap, nodes) = sample(&c).await;
            println!(
                "{simulated_min:>3} simulated min: JS heap {:.2} MB, {nodes} DOM nodes",
                heap / 1e6
            );
            samples.push((simulated_min, heap, nodes));
            next_sample += 10;
        }
        if elapsed >= wall_total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (heap, nodes) = sample(&c).await;
    samples.push((minutes, heap, nodes));
    println!(
        "{minutes:>3} simulated min: JS heap {:.2} MB, {nodes} DOM nodes (end)",
        heap / 1e6
    );
    let at10 = samples
        .iter()
        .find(|s| s.0 >= 10)
        .copied()
        .unwrap_or(samples[0]);
    let times: Vec<f64> = serde_json::from_value(
        c.execute("return window.flowpulseRenderTimes()", vec![])
            .await
            .expect("render times"),
    )
    .unwrap_or_default();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let updates = c
        .execute(
            "return document.querySelectorAll('#events li').length",
            vec![],
        )
        .await
        .unwrap_or(Value::Null);
    println!(
        "from 10 simulated min to the end: JS heap {:+.1}%, DOM nodes {:+.1}%",
        (heap / at10.1 - 1.0) * 100.0,
        (nodes as f64 / at10.2 as f64 - 1.0) * 100.0
    );
    println!(
        "render of one update: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over the last {} renders ({} event rows shown)",
        p(0.5),
        p(0.99),
        sorted.last().copied().unwrap_or(0.0),
        sorted.len(),
        updates
    );
    let _ = c.close().await;
    // Chromium too: it is in chromedriver's process group.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = flowpulse.kill();
    let _ = flowpulse.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("flowpulse-dashboard-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _ = Path::new(&dir);
    dir
}
