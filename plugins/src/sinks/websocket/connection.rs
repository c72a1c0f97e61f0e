//! One WebSocket connection: its writer drains the client's queue, its
//! reader answers the client's messages, a ping timer checks it is alive,
//! and a client that stays slow is closed with 1008 `too slow`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warp::ws::{Message, WebSocket};

use super::hub::{Channel, Client, Hub, Next};
use crate::sinks::util::now_rfc3339;

/// The largest message a client may send (CONTRACT §3): larger closes the
/// connection with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// How long a close frame may take to go out before the connection is
/// simply dropped (a stuck client would otherwise hold it).
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// What every connection of an endpoint shares.
#[derive(Debug)]
pub struct Settings {
    /// Channels this endpoint offers.
    pub available: BTreeSet<Channel>,
    /// How long a client may stay slow.
    pub slow_client_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// Cancelled at shutdown: clients get 1001.
    pub closing: CancellationToken,
    /// The component, for logs.
    pub component: String,
}

fn channel_names(channels: impl IntoIterator<Item = Channel>) -> Vec<&'static str> {
    channels.into_iter().map(Channel::as_str).collect()
}

/// The `connected` frame.
pub fn connected_frame(client_id: &str, settings: &Settings) -> Arc<str> {
    let frame = json!({
        "type": "connected",
        "timestamp": now_rfc3339(),
        "client_id": client_id,
        "channels": ["alerts", "metrics"],
        "available": channel_names(settings.available.iter().copied()),
    });
    Arc::from(frame.to_string())
}

fn error_frame(code: &str, message: &str) -> Arc<str> {
    let frame = json!({
        "type": "error",
        "timestamp": now_rfc3339(),
        "code": code,
        "message": message,
    });
    Arc::from(frame.to_string())
}

enum Ending {
    /// The client left, or the connection failed.
    Gone,
    /// The client closed: its Close frame is answered.
    ClosedByClient,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Serves one connection until it ends.
pub async fn serve(socket: WebSocket, hub: Arc<Hub>, client: Arc<Client>, settings: Arc<Settings>) {
    let (mut tx, mut rx) = socket.split();
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let slow_check_every = (settings.slow_client_timeout / 4).max(Duration::from_millis(25));
    let mut slow_check = tokio::time::interval(slow_check_every);
    let mut heard_since_ping = true;
    let ending = loop {
        tokio::select! {
            biased;
            () = settings.closing.cancelled() => break Ending::Close(1001, "server shutting down"),
            _ = slow_check.tick() => {
                if client.full_for().is_some_and(|d| d >= settings.slow_client_timeout) {
                    break slow(&hub, &settings, &client);
                }
            }
            () = client.wake.notified() => {
                let mut ended = None;
                while let Some(next) = client.next() {
                    let text = match next {
                        Next::Frame(frame) => frame.to_string(),
                        Next::Pong => json!({"type": "pong", "timestamp": now_rfc3339()}).to_string(),
                        Next::Events(events) => format!(
                            "{{\"type\":\"events\",\"timestamp\":\"{}\",\"data\":{},\"dropped\":{}}}",
                            now_rfc3339(),
                            events.data,
                            events.dropped
                        ),
                    };
                    match tokio::time::timeout(settings.slow_client_timeout, tx.send(Message::text(text))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            ended = Some(Ending::Gone);
                            break;
                        }
                        Err(_) => {
                            ended = Some(slow(&hub, &settings, &client));
                            break;
                        }
                    }
                }
                if let Some(ending) = ended {
                    break ending;
                }
            }
            message = rx.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    // Past the hard frame limit the library refuses the
                    // frame; it is still a message too big (1009).
                    Some(Err(e)) if e.to_string().contains("Space limit exceeded") => {
                        break Ending::Close(1009, "message too big");
                    }
                    _ => break Ending::Gone,
                };
                heard_since_ping = true;
                if message.is_close() {
                    break Ending::ClosedByClient;
                }
                if message.as_bytes().len() > MAX_CLIENT_MESSAGE {
                    break Ending::Close(1009, "message too big");
                }
                if message.is_text() || message.is_binary() {
                    answer(&hub, &client, &settings, message.as_bytes());
                }
            }
            _ = ping.tick() => {
                if !heard_since_ping {
                    break Ending::Close(1001, "no answer to ping");
                }
                heard_since_ping = false;
                let sent = tokio::time::timeout(settings.slow_client_timeout, tx.send(Message::ping(Vec::new()))).await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ending::Gone,
                    Err(_) => break slow(&hub, &settings, &client),
                }
            }
        }
    };
    match ending {
        Ending::Close(code, reason) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.send(Message::close_with(code, reason)))
                .await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.close()).await;
        }
        // The library queued the answering Close frame as it read the
        // client's; closing sends it, for a clean close (RFC 6455 §5.5.1).
        Ending::ClosedByClient => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.close()).await;
        }
        Ending::Gone => {}
    }
}

fn slow(hub: &Hub, settings: &Settings, client: &Client) -> Ending {
    hub.stats.slow_clients_closed.inc();
    tracing::info!(component = %settings.component, client = %client.id, "closing a WebSocket client that reads too slowly");
    Ending::Close(1008, "too slow")
}

/// Answers one client message: `ping`, `subscribe` or `unsubscribe`;
/// anything else gets an `error` frame and the connection stays open.
fn answer(hub: &Hub, client: &Client, settings: &Settings, bytes: &[u8]) {
    let refuse = |code: &str, message: &str| {
        hub.stats.messages_refused.inc();
        client.reply(error_frame(code, message));
    };
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(bytes) else {
        refuse("invalid_json", "a message is a JSON object with a `type`");
        return;
    };
    let Some(kind) = message.get("type").and_then(Value::as_str) else {
        match message.get("type") {
            None => refuse("missing_field", "the message has no `type`"),
            Some(_) => refuse("invalid_field", "`type` must be a string"),
        }
        return;
    };
    let subscribe = match kind {
        "ping" => {
            client.pong();
            return;
        }
        "subscribe" => true,
        "unsubscribe" => false,
        other => {
            let text = format!(
                "unknown message type `{}`; expected ping, subscribe or unsubscribe",
                truncate(other)
            );
            refuse("unknown_type", &text);
            return;
        }
    };
    let Some(names) = message.get("channels").and_then(Value::as_array) else {
        let code = match message.get("channels") {
            None => "missing_field",
            Some(_) => "invalid_field",
        };
        refuse(code, "`channels` must be an array of channel names");
        return;
    };
    let mut unknown = Vec::new();
    let mut known = Vec::new();
    for name in names {
        match name.as_str().and_then(Channel::parse) {
            Some(channel) if settings.available.contains(&channel) => known.push(channel),
            _ => unknown.push(truncate(&name.to_string()).to_owned()),
        }
    }
    if !unknown.is_empty() {
        let text = format!(
            "unknown channel {}; this endpoint offers {}",
            unknown.join(", "),
            channel_names(settings.available.iter().copied()).join(", ")
        );
        refuse("unknown_channel", &text);
    }
    let now: Vec<&str> = {
        let mut channels = client.channels.lock().unwrap_or_else(|p| p.into_inner());
        for channel in known {
            if subscribe {
                channels.insert(channel);
            } else {
                channels.remove(&channel);
            }
        }
        channel_names(channels.iter().copied())
    };
    let frame = json!({
        "type": if subscribe { "subscribed" } else { "unsubscribed" },
        "timestamp": now_rfc3339(),
        "channels": now,
    });
    client.reply(Arc::from(frame.to_string()));
}

/// At most 100 characters of a client's text, for error messages.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(100) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}
