//! Freshness: how long from an event's XADD until a WebSocket client sees it
//! counted. A load of `RATE` stage events per second goes to the stream;
//! every 100 ms a stage event of the agent `probe` goes too, and the client
//! notes when `agents[probe].total_tasks` first counts it.
//!
//! Usage: freshness REDIS_URL STREAM WS_URL [RATE] [SECONDS]   (default 10000 60)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowpulse_core::event::format_rfc3339_ms;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn stage_event(id: &str, workflow: &str, agent: &str) -> String {
    serde_json::json!({
        "key": workflow,
        "msg": {
            "message_id": id,
            "metadata": {"stage": "orchestrator:workflow:stage:completed", "timestamp": format_rfc3339_ms(now_ms())},
            "payload": {"workflow_id": workflow, "workflow_type": "feature", "agent_type": agent,
                        "stage": "work", "duration_ms": 100, "error": null}
        }
    })
    .to_string()
}

/// Publishes the load and the probes until `end`; records when each probe
/// was appended.
fn publish(
    url: &str,
    stream: &str,
    rate: u64,
    end: Instant,
    sent: &Mutex<Vec<Instant>>,
) -> redis::RedisResult<()> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let per_tick = (rate / 100).max(1);
    let mut n: u64 = 0;
    let mut tick: u64 = 0;
    let started = Instant::now();
    while Instant::now() < end {
        let mut pipe = redis::pipe();
        for _ in 0..per_tick {
            n += 1;
            let event = stage_event(&format!("load-{n}"), &format!("wf-{}", n % 10_000), "load");
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("topic")
                .arg("workflow:events")
                .arg("payload")
                .arg(event)
                .ignore();
        }
        pipe.query::<()>(&mut conn)?;
        tick += 1;
        if tick % 10 == 0 {
            let k = tick / 10;
            let probe = stage_event(&format!("probe-{k}"), &format!("probe-{k}"), "probe");
            redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("topic")
                .arg("workflow:events")
                .arg("payload")
                .arg(probe)
                .query::<String>(&mut conn)?;
            sent.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Instant::now());
        }
        let next = started + Duration::from_millis(10 * tick);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: freshness REDIS_URL STREAM WS_URL [RATE] [SECONDS]";
    let url = args.next().ok_or(usage)?;
    let stream = args.next().ok_or(usage)?;
    let ws_url = args.next().ok_or(usage)?;
    let rate: u64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs(seconds);
    let publisher = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || publish(&url, &stream, rate, end, &sent))
    };
    let mut counted: usize = 0;
    let mut latencies = Vec::new();
    let grace = end + Duration::from_secs(2);
    while let Ok(Some(Ok(message))) = tokio::time::timeout(
        grace.saturating_duration_since(Instant::now()),
        socket.next(),
    )
    .await
    {
        let Message::Text(text) = message else {
            continue;
        };
        let at = Instant::now();
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if frame["type"] != "metrics:update" {
            continue;
        }
        let probes = frame["data"]["agents"]
            .as_array()
            .and_then(|agents| agents.iter().find(|a| a["agent_type"] == "probe"))
            .and_then(|a| a["total_tasks"].as_u64())
            .unwrap_or(0) as usize;
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        while counted < probes.min(sent.len()) {
            latencies.push(at.duration_since(sent[counted]).as_secs_f64() * 1000.0);
            counted += 1;
        }
    }
    publisher.join().map_err(|_| "the publisher panicked")??;
    if latencies.is_empty() {
        return Err("no probe was counted".into());
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "probes={} XADD→counted at the client ms: p50={:.1} p99={:.1} max={:.1}",
        latencies.len(),
        pick(0.5),
        pick(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
