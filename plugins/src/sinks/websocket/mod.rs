//! `websocket`: pushes metrics documents, alert notices and live events to
//! WebSocket clients exactly as CONTRACT §3 says, on a server shared with
//! the other HTTP sinks at its address. Event handles are released at once:
//! the sink never holds a source back.

pub mod config;
pub mod connection;
pub mod hub;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Sink, SinkConfig,
    ValidateContext,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub use config::WebSocketConfig;
use connection::Settings;
use hub::{Channel, Hub, HubStats};

use crate::http::{ApiError, HttpMount, HttpServers, Mount, Route, SharedServer};
use crate::sinks::util::now_rfc3339;

/// How long shutdown waits for clients to take their 1001.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

inventory::submit! {
    PluginDescriptor::sink::<WebSocketConfig>("websocket", "Pushes metrics, alerts and live events to WebSocket clients")
}

#[async_trait]
impl SinkConfig for WebSocketConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        self.check(cx)
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::METRICS
            .or(RecordKinds::ALERTS)
            .or(RecordKinds::EVENTS)
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let server = HttpServers::of(cx).open(cx, &self.server_options())?;
        let mut available = BTreeSet::from([Channel::Metrics, Channel::Alerts]);
        let has_events_input = cx.topology.get(&cx.name).is_some_and(|me| {
            me.inputs.iter().any(|input| {
                cx.topology
                    .get(input)
                    .is_some_and(|p| p.output_kinds.intersects(RecordKinds::EVENTS))
            })
        });
        if has_events_input {
            available.insert(Channel::Events);
        }
        let stats = HubStats {
            clients: cx.stats.gauge("clients", "WebSocket clients connected."),
            frames_replaced: cx.stats.counter(
                "frames_replaced",
                "Frames replaced by newer ones before a client took them.",
            ),
            slow_clients_closed: cx
                .stats
                .counter("slow_clients_closed", "Clients closed as too slow."),
            messages_refused: cx.stats.counter(
                "messages_refused",
                "Client messages answered with an error frame.",
            ),
        };
        let hub = Arc::new(Hub::new(self.client_queue, self.events_per_frame, stats));
        let settings = Arc::new(Settings {
            available,
            slow_client_timeout: self.slow_client_timeout,
            ping_interval: self.ping_interval,
            closing: CancellationToken::new(),
            component: cx.name.clone(),
        });
        let filter = endpoint(self, &server, Arc::clone(&hub), Arc::clone(&settings));
        let mount = server.mount(
            &cx.name,
            vec![Route::new(Method::GET, self.path.clone())],
            filter,
        );
        if settings.available.contains(&Channel::Events) {
            tokio::spawn(send_events(
                Arc::clone(&hub),
                self.events_interval,
                settings.closing.clone(),
            ));
        }
        Ok(Box::new(WebSocketSink {
            hub,
            settings,
            mount: Some(mount),
        }))
    }
}

/// The upgrade route: the path, the token where reads are closed (as the
/// subprotocol `bearer.TOKEN`), `max_clients`, then the upgrade.
fn endpoint(
    config: &WebSocketConfig,
    server: &Arc<SharedServer>,
    hub: Arc<Hub>,
    settings: Arc<Settings>,
) -> warp::filters::BoxedFilter<(Response,)> {
    let path = config.path.clone();
    let auth_reads = config.auth_reads;
    let max_clients = config.max_clients;
    let server = Arc::clone(server);
    warp::path::full()
        .and_then(move |full: warp::path::FullPath| {
            let on_path = full.as_str() == path;
            async move {
                if on_path {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
        .and(warp::get())
        .and(warp::header::optional::<String>("upgrade"))
        .and_then(|upgrade: Option<String>| async move {
            if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                Ok(())
            } else {
                Err(Rejection::from(ApiError::invalid_parameter(
                    "Upgrade",
                    "this path takes WebSocket upgrades only (`Upgrade: websocket`)",
                )))
            }
        })
        .untuple_one()
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and_then(move |protocols: Option<String>| {
            let allowed =
                !auth_reads || server.token().authorizes_subprotocols(protocols.as_deref());
            async move {
                if allowed {
                    Ok(protocols)
                } else {
                    Err(Rejection::from(
                        ApiError::unauthorized().header("www-authenticate", "Bearer"),
                    ))
                }
            }
        })
        .and(warp::ws())
        .map(move |protocols: Option<String>, ws: warp::ws::Ws| {
            let Some((key, client)) =
                hub.join(max_clients, |id| connection::connected_frame(id, &settings))
            else {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_clients",
                    format!("this endpoint already has its max_clients ({max_clients})"),
                )
                .response();
            };
            // Leaves the hub however the upgrade ends, even if it never happens.
            let membership = Membership {
                hub: Arc::clone(&hub),
                key,
            };
            let settings = Arc::clone(&settings);
            let reply = ws
                .max_message_size(16 * connection::MAX_CLIENT_MESSAGE)
                .max_frame_size(16 * connection::MAX_CLIENT_MESSAGE)
                .on_upgrade(move |socket| async move {
                    connection::serve(socket, Arc::clone(&membership.hub), client, settings).await;
                    drop(membership);
                });
            let offers_flowpulse = protocols
                .as_deref()
                .is_some_and(|list| list.split(',').any(|p| p.trim() == "flowpulse"));
            if offers_flowpulse {
                warp::reply::with_header(reply, "sec-websocket-protocol", "flowpulse")
                    .into_response()
            } else {
                reply.into_response()
            }
        })
        .boxed()
}

struct Membership {
    hub: Arc<Hub>,
    key: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.key);
    }
}

/// Every `events_interval`, one `events` frame of what arrived (a uniform
/// sample of at most `events_per_frame`), if anything did.
async fn send_events(hub: Arc<Hub>, every: Duration, closing: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = closing.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (events, left_out) = hub.events.lock().unwrap_or_else(|p| p.into_inner()).take();
        if events.is_empty() && left_out == 0 {
            continue;
        }
        match serde_json::to_string(&events) {
            Ok(data) => hub.publish_events(Arc::from(data), events.len() as u64, left_out),
            Err(e) => tracing::error!("cannot encode events: {e}"),
        }
    }
}

#[derive(Serialize)]
struct Message<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    data: &'a T,
}

fn encode<T: Serialize>(kind: &str, data: &T) -> Result<Arc<str>, ComponentError> {
    let timestamp = now_rfc3339();
    serde_json::to_string(&Message {
        kind,
        timestamp: &timestamp,
        data,
    })
    .map(Arc::from)
    .map_err(|e| ComponentError::Transient(format!("cannot encode a {kind} frame: {e}")))
}

struct WebSocketSink {
    hub: Arc<Hub>,
    settings: Arc<Settings>,
    /// Held until flushed: the server lives while a sink on it does.
    mount: Option<Mount>,
}

#[async_trait]
impl Sink for WebSocketSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        let mut newest_metrics = None;
        for record in batch.records() {
            match record {
                Record::Metrics(doc) => newest_metrics = Some(doc),
                Record::Alert(alert) => {
                    self.hub.publish_alert(
                        &alert.notice_id,
                        encode(alert.status.message_type(), alert.as_ref())?,
                    );
                }
                Record::Event(event) => {
                    if self.settings.available.contains(&Channel::Events) {
                        self.hub
                            .events
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .offer(event);
                    }
                }
                Record::Custom(_) => {}
            }
        }
        if let Some(doc) = newest_metrics {
            // Encoded once for every client.
            self.hub
                .publish_metrics(encode("metrics:update", &doc.with_newest_history_point())?);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        self.settings.closing.cancel();
        self.hub.wake_all();
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        while !self.hub.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(mount) = self.mount.take() {
            mount.release().await;
        }
        Ok(())
    }
}
