//! The clients of one endpoint and their queues (CONTRACT §3 "Delivery").
//!
//! Every frame is encoded once and shared by all clients. Each client has a
//! small queue with replacement rules: a newer `metrics:update` replaces an
//! unsent older one, a newer `events` frame replaces an unsent older one
//! (adding its `dropped`), at most one `pong` waits, and alert frames are
//! never dropped or reordered. A client's own writer drains its queue, so a
//! slow one never delays the others.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flowpulse_core::event::WorkflowEvent;
use flowpulse_core::telemetry::{Counter, Gauge};
use rand::Rng as _;
use tokio::sync::Notify;

/// A channel a client may subscribe to; ordered by name, as lists of
/// channels are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// Alert notices.
    Alerts,
    /// Live workflow events (opt-in).
    Events,
    /// Metrics documents.
    Metrics,
}

impl Channel {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Metrics => "metrics",
            Channel::Alerts => "alerts",
            Channel::Events => "events",
        }
    }

    /// The channel called `name`.
    pub fn parse(name: &str) -> Option<Channel> {
        match name {
            "metrics" => Some(Channel::Metrics),
            "alerts" => Some(Channel::Alerts),
            "events" => Some(Channel::Events),
            _ => None,
        }
    }
}

/// An encoded frame, shared by every client it goes to.
pub type Frame = Arc<str>;

/// An `events` frame waiting for one client: the shared events array and
/// what this client missed since its previous `events` frame.
#[derive(Debug, Clone)]
pub struct PendingEvents {
    /// The JSON array of events (shared).
    pub data: Frame,
    /// How many events `data` holds.
    pub count: u64,
    /// Events not sent to this client since its previous `events` frame.
    pub dropped: u64,
}

/// What waits to be sent to one client.
#[derive(Debug, Default)]
pub struct Queue {
    /// Replies to the client's own messages (`connected`, `subscribed`,
    /// `error`), in order.
    pub replies: VecDeque<Frame>,
    /// At most one pong.
    pub pong: bool,
    /// Alert frames, never dropped or reordered.
    pub alerts: VecDeque<Frame>,
    /// The newest unsent metrics frame.
    pub metrics: Option<Frame>,
    /// The newest unsent events frame.
    pub events: Option<PendingEvents>,
    /// Since when the queue has been full, if it is.
    pub full_since: Option<Instant>,
}

impl Queue {
    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.replies.len()
            + usize::from(self.pong)
            + self.alerts.len()
            + usize::from(self.metrics.is_some())
            + usize::from(self.events.is_some())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The next thing a client's writer sends.
#[derive(Debug)]
pub enum Next {
    /// A frame encoded for everyone.
    Frame(Frame),
    /// A pong.
    Pong,
    /// An events frame, to finish with this client's `dropped`.
    Events(PendingEvents),
}

/// One connected client.
#[derive(Debug)]
pub struct Client {
    /// Its id (also in `connected`).
    pub id: String,
    /// What waits to be sent.
    pub queue: Mutex<Queue>,
    /// Woken when something is queued.
    pub wake: Notify,
    /// Its subscription.
    pub channels: Mutex<BTreeSet<Channel>>,
    capacity: usize,
}

impl Client {
    /// A client subscribed to metrics and alerts, with room for `capacity`
    /// frames.
    pub fn new(id: String, capacity: usize) -> Client {
        Client {
            id,
            queue: Mutex::default(),
            wake: Notify::new(),
            channels: Mutex::new(BTreeSet::from([Channel::Metrics, Channel::Alerts])),
            capacity,
        }
    }

    /// Whether it is subscribed to `channel`.
    pub fn wants(&self, channel: Channel) -> bool {
        lock(&self.channels).contains(&channel)
    }

    /// Queues with `push`, then notes whether the queue is full (and since
    /// when) and wakes the writer. Returns whether a frame was replaced.
    fn queue_with(&self, push: impl FnOnce(&mut Queue) -> bool) -> bool {
        let replaced = {
            let mut queue = lock(&self.queue);
            let replaced = push(&mut queue);
            if queue.len() >= self.capacity || replaced {
                queue.full_since.get_or_insert_with(Instant::now);
            }
            replaced
        };
        self.wake.notify_one();
        replaced
    }

    /// Queues a reply to the client's own message. A client that sends
    /// faster than it reads has at most `capacity` replies waiting; past
    /// that its queue counts as full (and it is closed if it stays so).
    pub fn reply(&self, frame: Frame) {
        let capacity = self.capacity;
        self.queue_with(|q| {
            if q.replies.len() < capacity {
                q.replies.push_back(frame);
                false
            } else {
                true
            }
        });
    }

    /// Queues a pong (at most one waits).
    pub fn pong(&self) {
        self.queue_with(|q| std::mem::replace(&mut q.pong, true));
    }

    /// Queues an alert frame.
    pub fn alert(&self, frame: Frame) {
        self.queue_with(|q| {
            q.alerts.push_back(frame);
            false
        });
    }

    /// Queues a metrics frame, replacing an unsent older one.
    pub fn metrics(&self, frame: Frame) -> bool {
        self.queue_with(|q| q.metrics.replace(frame).is_some())
    }

    /// Queues an events frame; an unsent older one is replaced and its
    /// events count as dropped.
    pub fn events(&self, data: Frame, count: u64, sampled_out: u64) -> bool {
        self.queue_with(|q| {
            let earlier = q.events.take();
            let dropped = sampled_out + earlier.as_ref().map_or(0, |e| e.count + e.dropped);
            q.events = Some(PendingEvents {
                data,
                count,
                dropped,
            });
            earlier.is_some()
        })
    }

    /// Takes the next thing to send: replies and pongs first, then alerts
    /// in order, then metrics, then events. The queue counts as drained
    /// once it is empty.
    pub fn next(&self) -> Option<Next> {
        let mut q = lock(&self.queue);
        let next = if let Some(frame) = q.replies.pop_front() {
            Some(Next::Frame(frame))
        } else if std::mem::take(&mut q.pong) {
            Some(Next::Pong)
        } else if let Some(frame) = q.alerts.pop_front() {
            Some(Next::Frame(frame))
        } else if let Some(frame) = q.metrics.take() {
            Some(Next::Frame(frame))
        } else {
            q.events.take().map(Next::Events)
        };
        if q.len() < self.capacity {
            q.full_since = None;
        }
        next
    }

    /// How long the queue has been full, if it is.
    pub fn full_for(&self) -> Option<std::time::Duration> {
        lock(&self.queue).full_since.map(|since| since.elapsed())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Events that arrived since the last `events` frame: a uniform sample of
/// at most `capacity` (reservoir sampling) and how many arrived.
#[derive(Debug)]
pub struct EventSample {
    capacity: usize,
    arrived: u64,
    kept: Vec<WorkflowEvent>,
}

impl EventSample {
    /// An empty sample of at most `capacity` events.
    pub fn new(capacity: usize) -> EventSample {
        EventSample {
            capacity,
            arrived: 0,
            kept: Vec::new(),
        }
    }

    /// Offers one event: each of the `arrived` events is kept with equal
    /// probability.
    pub fn offer(&mut self, event: &WorkflowEvent) {
        self.arrived += 1;
        if self.kept.len() < self.capacity {
            self.kept.push(event.clone());
        } else {
            let slot = rand::rng().random_range(0..self.arrived);
            if let Some(kept) = self.kept.get_mut(slot as usize) {
                *kept = event.clone();
            }
        }
    }

    /// Takes the sample (in arrival order of the kept ones is not promised)
    /// and how many were left out, leaving the sample empty.
    pub fn take(&mut self) -> (Vec<WorkflowEvent>, u64) {
        let kept = std::mem::take(&mut self.kept);
        let left_out = self.arrived - kept.len() as u64;
        self.arrived = 0;
        (kept, left_out)
    }
}

/// Telemetry of an endpoint.
#[derive(Debug, Clone)]
pub struct HubStats {
    /// Clients connected.
    pub clients: Arc<Gauge>,
    /// Frames replaced by newer ones before they were sent.
    pub frames_replaced: Arc<Counter>,
    /// Clients closed as too slow.
    pub slow_clients_closed: Arc<Counter>,
    /// Client messages answered with an `error` frame.
    pub messages_refused: Arc<Counter>,
}

/// Every client of one endpoint.
#[derive(Debug)]
pub struct Hub {
    clients: Mutex<HashMap<u64, Arc<Client>>>,
    next_id: AtomicU64,
    /// The newest metrics frame, sent at once to a client that connects.
    newest_metrics: Mutex<Option<Frame>>,
    /// Events since the last `events` frame.
    pub events: Mutex<EventSample>,
    /// Frames per client.
    pub capacity: usize,
    /// Notice ids sent lately: a notice sent again (after a failed delivery
    /// or a restart) is not shown twice.
    recent_notices: Mutex<crate::sinks::util::RecentNotices>,
    /// Telemetry.
    pub stats: HubStats,
}

impl Hub {
    /// An endpoint with no clients.
    pub fn new(capacity: usize, events_per_frame: usize, stats: HubStats) -> Hub {
        Hub {
            clients: Mutex::default(),
            next_id: AtomicU64::new(1),
            newest_metrics: Mutex::default(),
            events: Mutex::new(EventSample::new(events_per_frame)),
            capacity,
            recent_notices: Mutex::default(),
            stats,
        }
    }

    /// How many clients are connected.
    pub fn len(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a client, unless `max` are connected already. It is queued the
    /// newest metrics frame after `connected` (built by `hello`).
    pub fn join(
        &self,
        max: usize,
        hello: impl FnOnce(&str) -> Frame,
    ) -> Option<(u64, Arc<Client>)> {
        let mut clients = lock(&self.clients);
        if clients.len() >= max {
            return None;
        }
        let key = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client::new(uuid::Uuid::new_v4().to_string(), self.capacity));
        client.reply(hello(&client.id));
        if let Some(frame) = lock(&self.newest_metrics).clone() {
            client.metrics(frame);
        }
        clients.insert(key, Arc::clone(&client));
        self.stats.clients.set(clients.len() as i64);
        Some((key, client))
    }

    /// Removes a client.
    pub fn leave(&self, key: u64) {
        let mut clients = lock(&self.clients);
        clients.remove(&key);
        self.stats.clients.set(clients.len() as i64);
    }

    fn each(&self, channel: Channel, mut f: impl FnMut(&Client)) {
        let clients: Vec<Arc<Client>> = lock(&self.clients).values().cloned().collect();
        for client in clients.iter().filter(|c| c.wants(channel)) {
            f(client);
        }
    }

    /// Sends a metrics frame to every subscriber, and keeps it for those
    /// who connect later.
    pub fn publish_metrics(&self, frame: Frame) {
        *lock(&self.newest_metrics) = Some(Arc::clone(&frame));
        self.each(Channel::Metrics, |client| {
            if client.metrics(Arc::clone(&frame)) {
                self.stats.frames_replaced.inc();
            }
        });
    }

    /// Sends an alert frame to every subscriber, unless its notice was
    /// sent lately.
    pub fn publish_alert(&self, notice_id: &str, frame: Frame) {
        if !lock(&self.recent_notices).first_sighting(notice_id) {
            return;
        }
        self.each(Channel::Alerts, |client| client.alert(Arc::clone(&frame)));
    }

    /// Sends an events frame (`data` holding `count` events, `sampled_out`
    /// more left out) to every subscriber.
    pub fn publish_events(&self, data: Frame, count: u64, sampled_out: u64) {
        self.each(Channel::Events, |client| {
            if client.events(Arc::clone(&data), count, sampled_out) {
                self.stats.frames_replaced.inc();
            }
        });
    }

    /// Wakes every client's writer (to notice shutdown).
    pub fn wake_all(&self) {
        for client in lock(&self.clients).values() {
            client.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Arc::from(text)
    }

    fn drain(client: &Client) -> Vec<String> {
        std::iter::from_fn(|| client.next())
            .map(|next| match next {
                Next::Frame(f) => f.to_string(),
                Next::Pong => "pong".into(),
                Next::Events(e) => format!("events({}, dropped {})", e.data, e.dropped),
            })
            .collect()
    }

    #[test]
    fn a_newer_metrics_frame_replaces_an_unsent_one_and_alerts_keep_their_order() {
        let client = Client::new("c".into(), 16);
        client.metrics(frame("m1"));
        client.alert(frame("a1"));
        client.pong();
        client.pong();
        assert!(client.metrics(frame("m2")));
        client.alert(frame("a2"));
        assert_eq!(drain(&client), ["pong", "a1", "a2", "m2"]);
    }

    #[test]
    fn a_replaced_events_frame_adds_its_events_to_dropped() {
        let client = Client::new("c".into(), 16);
        client.events(frame("[1,2]"), 2, 3);
        client.events(frame("[4]"), 1, 0);
        assert_eq!(drain(&client), ["events([4], dropped 5)"]);
        client.events(frame("[5]"), 1, 0);
        assert_eq!(drain(&client), ["events([5], dropped 0)"]);
    }

    #[test]
    fn replies_to_a_client_that_floods_are_bounded() {
        let client = Client::new("c".into(), 4);
        for _ in 0..100 {
            client.reply(frame("error"));
        }
        assert_eq!(lock(&client.queue).replies.len(), 4);
        assert!(client.full_for().is_some());
    }

    #[test]
    fn a_full_queue_notes_since_when_until_drained() {
        let client = Client::new("c".into(), 2);
        client.alert(frame("a1"));
        assert!(client.full_for().is_none());
        client.alert(frame("a2"));
        assert!(client.full_for().is_some());
        client.next();
        assert!(client.full_for().is_none());
    }

    #[test]
    fn a_notice_sent_again_is_not_shown_twice() {
        let mut recent = crate::sinks::util::RecentNotices::default();
        assert!(recent.first_sighting("n1"));
        assert!(!recent.first_sighting("n1"));
        assert!(recent.first_sighting("n2"));
    }

    #[test]
    fn the_sample_is_bounded_and_counts_what_it_left_out() {
        let mut sample = EventSample::new(3);
        let event = WorkflowEvent {
            id: None,
            kind: flowpulse_core::event::EventKind::WorkflowCreated,
            timestamp_ms: 0,
            workflow_id: "wf-1".into(),
            workflow_type: None,
            agent_type: None,
            stage: None,
            duration_ms: None,
            error: None,
        };
        for _ in 0..10 {
            sample.offer(&event);
        }
        let (kept, left_out) = sample.take();
        assert_eq!((kept.len(), left_out), (3, 7));
        assert_eq!(sample.take().1, 0);
    }
}
