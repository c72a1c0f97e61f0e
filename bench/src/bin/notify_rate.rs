//! `webhook` delivery rate end to end through the outbox, and the outbox's
//! own cost. Run by `bench/notify.sh`, which pins each side to its core.
//!
//! Usage:
//!   notify_rate receive ADDR        a receiver answering 200 at once
//!   notify_rate send URL N          the real runtime: a source emitting N
//!                                   notices (one per alert, in batches of
//!                                   100) into a `webhook` sink posting to URL;
//!                                   prints notices/s from the first batch to
//!                                   the last delivery
//!   notify_rate outbox N            the outbox alone: N notices inserted in
//!                                   batches of 100 and marked delivered in
//!                                   batches of 16; prints its time per notice

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpulse_core::alert::{Alert, AlertStatus, Severity};
use flowpulse_core::plugin::prelude::*;
use flowpulse_core::plugin::{BuildContext, BuildError, Shutdown, SourceContext};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use flowpulse_core::telemetry::{ExtraValue, Telemetry};
use flowpulse_plugins::sinks::notify::outbox::{now_ms, NewRow, Outbox, Outcome, RowState};
use warp::Filter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The i-th notice: a new alert of its own, triggered now.
fn notice(i: u64) -> Alert {
    let now = flowpulse_core::event::format_rfc3339_ms(now_ms());
    let mut alert = Alert {
        id: format!("00000000-0000-4000-8000-{i:012x}"),
        rule_id: "6f1c6c1e-7f5a-5b7e-8d3e-0a1b2c3d4e5f".into(),
        rule_name: "bench".into(),
        instance: format!("agent-{}", i % 100),
        severity: Severity::Warning,
        status: AlertStatus::Triggered,
        message: "agent success rate below 90%".into(),
        metric: "agents[x].success_rate_percent".into(),
        operator: "<".into(),
        threshold: 90.0,
        value: Some(80.0),
        data: serde_json::json!({"value": 80.0, "as_of": now}),
        channels: vec!["hook".into()],
        runbook_url: Some("https://runbooks.example.com/agents".into()),
        muted: false,
        repeat: 0,
        notice_id: String::new(),
        as_of: now.clone(),
        created_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        acknowledged_until: None,
        resolved_at: None,
        resolved_by: None,
    };
    alert.notice_id = alert.notice_id();
    alert
}

/// `[sources.NAME] type = "notice_burst"`: emits `count` notices, then
/// waits until `sink` has delivered them all and prints the rate.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstConfig {
    count: u64,
    sink: String,
}

inventory::submit! {
    PluginDescriptor::source::<BurstConfig>("notice_burst", "Benchmark: emits alert notices as fast as they are taken")
}

#[async_trait]
impl SourceConfig for BurstConfig {
    fn outputs(&self) -> RecordKinds {
        RecordKinds::ALERTS
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(Burst {
            count: self.count,
            sink: self.sink.clone(),
            telemetry: cx.telemetry.clone(),
        }))
    }
}

struct Burst {
    count: u64,
    sink: String,
    telemetry: Telemetry,
}

fn delivered(telemetry: &Telemetry, sink: &str) -> u64 {
    telemetry
        .stats(sink)
        .and_then(|s| match s.snapshot().extra.get("notices_delivered") {
            Some(ExtraValue::Counter(n)) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

#[async_trait]
impl Source for Burst {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), ComponentError> {
        let notices: Vec<Alert> = (0..self.count).map(notice).collect();
        let start = Instant::now();
        for chunk in notices.chunks(100) {
            let records = chunk
                .iter()
                .map(|a| Record::Alert(Arc::new(a.clone())))
                .collect();
            cx.out.send(Batch::new(records, Vec::new())).await;
        }
        let taken = start.elapsed();
        while delivered(&self.telemetry, &self.sink) < self.count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let all = start.elapsed();
        println!(
            "webhook: {} notices delivered in {:.3} s: {:.0} notices/s end to end (all taken into the outbox after {:.3} s)",
            self.count,
            all.as_secs_f64(),
            self.count as f64 / all.as_secs_f64(),
            taken.as_secs_f64()
        );
        Ok(())
    }
}

async fn receive(addr: &str) {
    let count = Arc::new(AtomicU64::new(0));
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |_body: bytes::Bytes| {
            count.fetch_add(1, Ordering::Relaxed);
            "ok"
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the receiver");
    warp::serve(route).incoming(listener).run().await;
}

async fn send(url: &str, n: u64) {
    flowpulse_plugins::link();
    let dir = std::env::temp_dir().join(format!("flowpulse-notify-bench-{}", std::process::id()));
    let text = format!(
        r#"[pipeline]
name = "notify-bench"
data_dir = "{dir}"

[sources.burst]
type = "notice_burst"
count = {n}
sink = "hook"

[sinks.hook]
type = "webhook"
inputs = ["burst"]
url = "{url}"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#,
        dir = dir.display()
    );
    let config = flowpulse_core::config::PipelineConfig::parse("bench.toml", &text, |_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let pipeline = flowpulse_core::runtime::Pipeline::new(config);
    let result = pipeline.run(Shutdown::new()).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn outbox(n: u64) {
    let dir = std::env::temp_dir().join(format!("flowpulse-outbox-bench-{}", std::process::id()));
    let outbox = Outbox::open(&dir.join("outbox.db")).await.expect("open");
    let notices: Vec<Arc<Alert>> = (0..n).map(|i| Arc::new(notice(i))).collect();
    let start = Instant::now();
    let mut last_seq = 0;
    for chunk in notices.chunks(100) {
        let rows = chunk
            .iter()
            .map(|a| NewRow {
                alert: Arc::clone(a),
                state: RowState::Pending,
                reason: None,
            })
            .collect();
        outbox.insert(rows, &mut last_seq).await.expect("insert");
    }
    let inserted = start.elapsed();
    for chunk in notices.chunks(16) {
        let outcomes: Vec<Outcome> = chunk
            .iter()
            .map(|a| Outcome {
                notice_id: a.notice_id.clone(),
                state: RowState::Delivered,
                attempts: 1,
                next_attempt_at: now_ms(),
                last_error: None,
                done_at: Some(now_ms()),
            })
            .collect();
        outbox.record(&outcomes).await.expect("record");
    }
    let all = start.elapsed();
    outbox.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "outbox: {n} notices in {:.3} s ({:.1} µs each: insert {:.1} µs, mark delivered {:.1} µs)",
        all.as_secs_f64(),
        all.as_secs_f64() * 1e6 / n as f64,
        inserted.as_secs_f64() * 1e6 / n as f64,
        (all - inserted).as_secs_f64() * 1e6 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["receive", addr] => runtime.block_on(receive(addr)),
        ["send", url, n] => runtime.block_on(send(url, n.parse().expect("N"))),
        ["outbox", n] => runtime.block_on(outbox(n.parse().expect("N"))),
        _ => {
            eprintln!("usage: notify_rate receive ADDR | send URL N | outbox N");
            std::process::exit(2);
        }
    }
}
