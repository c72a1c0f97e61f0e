//! WebSocket fan-out: holds many clients on one endpoint and measures, per
//! metrics document, the time from its emission (`last_update`, set by the
//! aggregate) to its arrival at the last client.
//!
//! Usage: ws_fanout URL [CLIENTS] [SECONDS]   (default 1000 120)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowpulse_core::event::parse_rfc3339_ms;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Per document (`last_update`): how many clients got it, the latest arrival.
type Arrivals = Arc<Mutex<HashMap<String, (usize, i64)>>>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `last_update` of a `metrics:update` frame, without parsing the rest.
fn last_update(text: &str) -> Option<&str> {
    if !text.starts_with("{\"type\":\"metrics:update\"") {
        return None;
    }
    let start = text.find("\"last_update\":\"")? + "\"last_update\":\"".len();
    let end = text[start..].find('"')? + start;
    Some(&text[start..end])
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: ws_fanout URL [CLIENTS] [SECONDS]")?;
    let clients: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(120), |a| a.parse())?;
    let arrivals: Arrivals = Arc::default();
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        sockets.push(socket);
    }
    eprintln!("{clients} clients connected; measuring for {seconds} s");
    let started = now_ms();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut socket in sockets {
        let arrivals = Arc::clone(&arrivals);
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(end.saturating_duration_since(Instant::now()), socket.next())
                    .await
            {
                if let Message::Text(text) = message {
                    if let Some(stamp) = last_update(&text) {
                        let at = now_ms();
                        let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                        let entry = arrivals.entry(stamp.to_owned()).or_insert((0, at));
                        entry.0 += 1;
                        entry.1 = entry.1.max(at);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<i64> = arrivals
        .iter()
        .filter(|(_, (count, _))| *count == clients)
        .filter_map(|(stamp, (_, last))| {
            let emitted = parse_rfc3339_ms(stamp)?;
            // The document a client gets at connect is older than the run.
            (emitted >= started).then_some(last - emitted)
        })
        .collect();
    latencies.sort_unstable();
    let partial = arrivals.values().filter(|(c, _)| *c < clients).count();
    if latencies.is_empty() {
        return Err("no document reached every client".into());
    }
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "documents={} (not at every client: {partial}) emission→last client ms: p50={} p99={} max={}",
        latencies.len(),
        pick(0.5),
        pick(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
