//! The delivery worker of one notification sink: sends pending outbox rows,
//! one alert's notices in `seq` order (a resolved never overtakes its
//! triggered), different alerts concurrently, retrying with backoff, and
//! writes the outcomes back to the outbox in batches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpulse_core::alert::Alert;
use flowpulse_core::telemetry::{ComponentStats, Counter, Gauge};
use futures::FutureExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::outbox::{now_ms, Outbox, Outcome, Pending, RowState};
use super::retry::{Backoff, DeliveryError};
use super::Channel;

/// How often finished rows past their keeping time are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// How soon outcomes the outbox refused are written again.
const WRITE_BACK_RETRY: Duration = Duration::from_secs(1);

/// The longest a shutdown waits for attempts in flight; those still
/// running then stay pending and are sent again after the restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the worker counts.
pub struct WorkerStats {
    /// Notices the receiver took.
    pub delivered: Arc<Counter>,
    /// Notices given up on (refused, or past `max_age`).
    pub failed: Arc<Counter>,
    /// Attempts that failed and will be made again.
    pub retries: Arc<Counter>,
    /// Rows waiting for delivery.
    pub pending: Arc<Gauge>,
    /// The component's own stats: a notice given up on is its error.
    pub component: Arc<ComponentStats>,
}

/// How the worker delivers.
pub struct WorkerSettings {
    /// The sink's name, for logs.
    pub name: String,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// Past this age a notice is failed.
    pub max_age: Duration,
    /// Attempts at once (alerts in flight).
    pub max_in_flight: usize,
    /// The longest one attempt may take, whatever the channel does.
    pub attempt_timeout: Duration,
}

/// Messages sent, and what they carried.
type Attempt = (Vec<Pending>, Result<(), DeliveryError>);

/// The worker's state: every pending row, queued per alert.
pub struct Worker {
    outbox: Arc<Outbox>,
    channel: Arc<dyn Channel>,
    settings: WorkerSettings,
    stats: WorkerStats,
    /// Pending rows per alert, in `seq` order.
    queues: HashMap<String, VecDeque<Pending>>,
    /// Alerts whose first row is due and not in flight, oldest first.
    ready: VecDeque<String>,
    /// Alerts whose first row waits for its next attempt.
    delayed: BinaryHeap<Reverse<(i64, String)>>,
    /// Alerts with an attempt in flight: their later rows wait for it.
    in_flight: HashSet<String>,
    tasks: JoinSet<Attempt>,
    /// Outcomes not written back yet.
    outcomes: Vec<Outcome>,
    /// When the last message went out (for channels that coalesce).
    last_sent: Option<Instant>,
    /// Whether the receiver is failing (its failures are logged once).
    failing: bool,
}

impl Worker {
    /// A worker resuming `pending` (the outbox's pending rows, in `seq`
    /// order).
    pub fn new(
        outbox: Arc<Outbox>,
        channel: Arc<dyn Channel>,
        settings: WorkerSettings,
        stats: WorkerStats,
        pending: Vec<Pending>,
    ) -> Worker {
        let mut worker = Worker {
            outbox,
            channel,
            settings,
            stats,
            queues: HashMap::new(),
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            in_flight: HashSet::new(),
            tasks: JoinSet::new(),
            outcomes: Vec::new(),
            last_sent: None,
            failing: false,
        };
        worker.take(pending);
        worker
    }

    /// Queues new rows behind their alert's earlier ones.
    fn take(&mut self, rows: Vec<Pending>) {
        self.stats.pending.add(rows.len() as i64);
        for row in rows {
            let queue = self.queues.entry(row.alert_id.clone()).or_default();
            let was_idle = queue.is_empty() && !self.in_flight.contains(&row.alert_id);
            let alert_id = row.alert_id.clone();
            queue.push_back(row);
            // A queue that had rows is scheduled (or in flight) already.
            if was_idle {
                self.schedule(alert_id);
            }
        }
    }

    /// Puts an alert whose queue is not in flight where its first row's
    /// next attempt says; forgets an empty one.
    fn schedule(&mut self, alert_id: String) {
        let Some(head) = self.queues.get(&alert_id).and_then(VecDeque::front) else {
            self.queues.remove(&alert_id);
            return;
        };
        if head.next_attempt_at <= now_ms() {
            self.ready.push_back(alert_id);
        } else {
            self.delayed.push(Reverse((head.next_attempt_at, alert_id)));
        }
    }

    /// Runs until `rx` closes (the sink's flush), then waits a little for
    /// attempts in flight and writes every outcome back.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Vec<Pending>>) {
        let mut last_prune: Option<Instant> = None;
        loop {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                self.prune().await;
            }
            self.promote_due();
            self.dispatch();
            self.write_back().await;
            let wake = self.next_wake();
            tokio::select! {
                rows = rx.recv() => match rows {
                    Some(rows) => self.take(rows),
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(attempt) = done {
                        self.settle(attempt);
                    }
                    // Every attempt finished meanwhile too: their outcomes
                    // are written back in one transaction.
                    while let Some(done) = self.tasks.try_join_next() {
                        if let Ok(attempt) = done {
                            self.settle(attempt);
                        }
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
        self.stop().await;
    }

    /// Moves alerts whose next attempt has come to `ready`.
    fn promote_due(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, alert_id))) = self.delayed.pop() {
                self.ready.push_back(alert_id);
            }
        }
    }

    /// When the loop must look again without news: the next delayed
    /// attempt, or the end of a coalescing channel's quiet interval.
    fn next_wake(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse((at, _))| {
            Instant::now() + Duration::from_millis((at - now_ms()).max(0) as u64)
        });
        // While a message is out, its end wakes the loop instead.
        let coalesced = match (self.channel.coalesce(), self.last_sent) {
            (Some(interval), Some(last)) if !self.ready.is_empty() && self.tasks.is_empty() => {
                Some(last + interval)
            }
            _ => None,
        };
        // Outcomes the outbox refused are written again soon.
        let write_back = (!self.outcomes.is_empty()).then(|| Instant::now() + WRITE_BACK_RETRY);
        [delayed, coalesced, write_back].into_iter().flatten().min()
    }

    /// Starts what may start: one attempt per ready alert up to
    /// `max_in_flight`, or, for a coalescing channel, one message with
    /// every ready alert's notices once its interval has passed.
    fn dispatch(&mut self) {
        if let Some(interval) = self.channel.coalesce() {
            let quiet = self.last_sent.is_none_or(|last| last.elapsed() >= interval);
            if !self.tasks.is_empty() || !quiet || self.ready.is_empty() {
                return;
            }
            let mut rows: Vec<Pending> = Vec::new();
            let mut not_taken = Vec::new();
            while let Some(alert_id) = self.pop_ready() {
                let Some(queue) = self.queues.get_mut(&alert_id) else {
                    continue;
                };
                if queue.front().is_some_and(|r| r.alone) {
                    // Sent by itself, the next message; the others wait.
                    if rows.is_empty() && not_taken.is_empty() {
                        rows.extend(queue.pop_front());
                        self.spawn_coalesced_alone(rows);
                        // Its alert is in flight; every other stays ready.
                        return;
                    }
                    not_taken.push(alert_id);
                    continue;
                }
                let until = queue.iter().position(|r| r.alone).unwrap_or(queue.len());
                rows.extend(queue.drain(..until));
                if !queue.is_empty() {
                    // Its notices after a lone one wait for that one.
                    not_taken.push(alert_id);
                }
            }
            self.ready.extend(not_taken);
            rows.sort_by_key(|r| r.seq);
            if !rows.is_empty() {
                self.last_sent = Some(Instant::now());
                self.spawn(rows);
            }
            return;
        }
        while self.tasks.len() < self.settings.max_in_flight {
            let Some(alert_id) = self.pop_ready() else {
                break;
            };
            let Some(row) = self.queues.get_mut(&alert_id).and_then(VecDeque::pop_front) else {
                continue;
            };
            self.spawn(vec![row]);
        }
    }

    /// The next ready alert whose first row is still within `max_age`;
    /// rows past it are failed on the way (a long outage, a long stop).
    fn pop_ready(&mut self) -> Option<String> {
        let now = now_ms();
        let max_age = self.settings.max_age.as_millis() as i64;
        while let Some(alert_id) = self.ready.pop_front() {
            while let Some(queue) = self.queues.get_mut(&alert_id) {
                match queue.front() {
                    Some(head) if now - head.created_at >= max_age => {
                        if let Some(row) = queue.pop_front() {
                            let reason = expired(&row);
                            self.give_up(row, reason);
                        }
                    }
                    Some(_) => return Some(alert_id),
                    None => {
                        self.queues.remove(&alert_id);
                        break;
                    }
                }
            }
        }
        None
    }

    /// One notice that must go alone, in a coalescing channel's slot.
    fn spawn_coalesced_alone(&mut self, rows: Vec<Pending>) {
        self.last_sent = Some(Instant::now());
        self.spawn(rows);
    }

    fn spawn(&mut self, rows: Vec<Pending>) {
        if rows.is_empty() {
            return;
        }
        for row in &rows {
            self.in_flight.insert(row.alert_id.clone());
        }
        let channel = Arc::clone(&self.channel);
        let limit = self.settings.attempt_timeout;
        self.tasks.spawn(async move {
            let alerts: Vec<Arc<Alert>> = rows.iter().map(|r| Arc::clone(&r.alert)).collect();
            // Whatever a channel does, an attempt ends: a receiver that
            // stalls mid-answer, or a bug that panics, is a failed attempt
            // to retry, never an alert stuck in flight.
            let attempt = std::panic::AssertUnwindSafe(channel.deliver(&alerts)).catch_unwind();
            let result = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(DeliveryError::Retry {
                    reason: "the delivery failed unexpectedly (a bug; see the log)".into(),
                    after: None,
                }),
                Err(_) => Err(DeliveryError::Retry {
                    reason: format!("no answer within {}", humantime::format_duration(limit)),
                    after: None,
                }),
            };
            (rows, result)
        });
    }

    /// Records what became of one message.
    fn settle(&mut self, (rows, result): Attempt) {
        let now = now_ms();
        let alert_ids: HashSet<String> = rows.iter().map(|r| r.alert_id.clone()).collect();
        match result {
            Ok(()) => {
                if std::mem::replace(&mut self.failing, false) {
                    tracing::info!(component = %self.settings.name, "deliveries succeed again");
                }
                self.stats.delivered.add(rows.len() as u64);
                self.stats.pending.add(-(rows.len() as i64));
                for row in rows {
                    self.outcomes.push(Outcome {
                        notice_id: row.notice_id,
                        state: RowState::Delivered,
                        attempts: row.attempts + 1,
                        next_attempt_at: now,
                        last_error: None,
                        done_at: Some(now),
                    });
                }
            }
            // A coalesced message refused: each notice is tried alone, so
            // one the receiver cannot take fails without the others.
            Err(DeliveryError::Refused { reason }) if rows.len() > 1 => {
                for mut row in rows.into_iter().rev() {
                    row.alone = true;
                    row.last_error = Some(reason.clone());
                    self.queues
                        .entry(row.alert_id.clone())
                        .or_default()
                        .push_front(row);
                }
            }
            Err(DeliveryError::Refused { reason }) => {
                for mut row in rows {
                    row.attempts += 1;
                    self.give_up(row, reason.clone());
                }
            }
            Err(DeliveryError::Retry { reason, after }) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        component = %self.settings.name,
                        "delivery failed, retrying with backoff (logged once until a delivery succeeds): {reason}"
                    );
                }
                let max_age = self.settings.max_age.as_millis() as i64;
                // Back in front of their queues, in order.
                for mut row in rows.into_iter().rev() {
                    row.attempts += 1;
                    row.last_error = Some(reason.clone());
                    if now - row.created_at >= max_age {
                        let reason = expired(&row);
                        self.give_up(row, reason);
                        continue;
                    }
                    self.stats.retries.inc();
                    let wait = self.settings.backoff.delay(row.attempts, after);
                    row.next_attempt_at = now + wait.as_millis() as i64;
                    self.outcomes.push(Outcome {
                        notice_id: row.notice_id.clone(),
                        state: RowState::Pending,
                        attempts: row.attempts,
                        next_attempt_at: row.next_attempt_at,
                        last_error: row.last_error.clone(),
                        done_at: None,
                    });
                    self.queues
                        .entry(row.alert_id.clone())
                        .or_default()
                        .push_front(row);
                }
            }
        }
        for alert_id in alert_ids {
            self.in_flight.remove(&alert_id);
            self.schedule(alert_id);
        }
    }

    /// Marks a row failed: logged and counted once.
    fn give_up(&mut self, row: Pending, reason: String) {
        tracing::warn!(
            component = %self.settings.name,
            notice_id = %row.notice_id,
            alert_id = %row.alert_id,
            attempts = row.attempts,
            "notice not delivered, given up: {reason}"
        );
        self.stats.failed.inc();
        self.stats.pending.add(-1);
        self.stats
            .component
            .error(format!("notice {} not delivered: {reason}", row.notice_id));
        let now = now_ms();
        self.outcomes.push(Outcome {
            notice_id: row.notice_id,
            state: RowState::Failed,
            attempts: row.attempts,
            next_attempt_at: now,
            last_error: Some(reason),
            done_at: Some(now),
        });
    }

    /// Writes the outcomes gathered so far back, in one transaction; kept
    /// for the next round if the outbox refuses.
    async fn write_back(&mut self) {
        if self.outcomes.is_empty() {
            return;
        }
        match self.outbox.record(&self.outcomes).await {
            Ok(()) => self.outcomes.clear(),
            Err(e) => {
                tracing::warn!(component = %self.settings.name, "cannot record deliveries: {e}")
            }
        }
    }

    async fn prune(&mut self) {
        match self.outbox.prune().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(component = %self.settings.name, deleted = n, "deleted finished outbox rows")
            }
            Err(e) => {
                tracing::warn!(component = %self.settings.name, "cannot prune the outbox: {e}")
            }
        }
    }

    /// Waits up to [`SHUTDOWN_GRACE`] for attempts in flight, leaves the
    /// rest pending, and writes every outcome back.
    async fn stop(mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(attempt))) => self.settle(attempt),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
        self.write_back().await;
        self.outbox.close().await;
    }
}

/// Why a row past `max_age` is given up, with its last error.
fn expired(row: &Pending) -> String {
    match &row.last_error {
        Some(e) => format!("not delivered within max_age; last error: {e}"),
        None => "not delivered within max_age".to_owned(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use proptest::prelude::*;
    use std::sync::Mutex;

    use crate::sinks::notify::render::tests::sample;

    /// A channel answering from a script: per notice, how many attempts
    /// fail (retryable) before the last one succeeds or is refused. It
    /// records every attempt and whether two attempts of one alert ever
    /// overlapped.
    struct Scripted {
        failures: HashMap<String, (u32, bool)>,
        coalesce: Option<Duration>,
        attempts: Mutex<HashMap<String, u32>>,
        active: Mutex<HashSet<String>>,
        overlapped: Mutex<bool>,
        /// (alert id, notice id) of each success, in order.
        delivered: Mutex<Vec<(String, String)>>,
    }

    #[async_trait]
    impl Channel for Scripted {
        async fn deliver(&self, notices: &[Arc<Alert>]) -> Result<(), DeliveryError> {
            let alerts: HashSet<String> = notices.iter().map(|n| n.id.clone()).collect();
            {
                let mut active = self.active.lock().unwrap();
                for a in &alerts {
                    if !active.insert(a.clone()) {
                        *self.overlapped.lock().unwrap() = true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
            let mut result = Ok(());
            for n in notices {
                let attempt = {
                    let mut attempts = self.attempts.lock().unwrap();
                    let a = attempts.entry(n.notice_id.clone()).or_default();
                    *a += 1;
                    *a
                };
                let (fail, refuse) = self.failures[&n.notice_id];
                if attempt <= fail {
                    result = Err(DeliveryError::Retry {
                        reason: "scripted".into(),
                        after: None,
                    });
                } else if refuse && result.is_ok() {
                    result = Err(DeliveryError::Refused {
                        reason: "scripted".into(),
                    });
                }
            }
            if result.is_ok() {
                let mut d = self.delivered.lock().unwrap();
                for n in notices {
                    d.push((n.id.clone(), n.notice_id.clone()));
                }
            }
            let mut active = self.active.lock().unwrap();
            for a in &alerts {
                active.remove(a);
            }
            result
        }

        fn coalesce(&self) -> Option<Duration> {
            self.coalesce
        }
    }

    fn stats() -> WorkerStats {
        let s = Arc::new(ComponentStats::default());
        WorkerStats {
            component: Arc::clone(&s),
            delivered: s.counter("notices_delivered", "x"),
            failed: s.counter("deliveries_failed", "x"),
            retries: s.counter("delivery_retries", "x"),
            pending: s.gauge("outbox_pending", "x"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        /// Against the oracle "each alert's notices are sent in arrival
        /// order, never two of one alert at once, each ends delivered or
        /// failed exactly once": any mix of alerts, notices per alert,
        /// retryable failures, refusals, arrival in bursts, concurrency
        /// and coalescing.
        #[test]
        fn notices_end_once_and_in_order_per_alert(
            notices in proptest::collection::vec((0u8..6, 0u32..4, prop::bool::weighted(0.1)), 1..40),
            bursts in 1usize..5,
            max_in_flight in 1usize..6,
            coalesce in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let outbox = Arc::new(Outbox::open(&dir.path().join("outbox.db")).await.unwrap());
                // The k-th notice of an alert has repeat k: its own notice id.
                let mut repeats: HashMap<u8, u32> = HashMap::new();
                let alerts: Vec<(Arc<Alert>, u32, bool)> = notices.iter().map(|(alert, fail, refuse)| {
                    let r = repeats.entry(*alert).or_default();
                    let mut a = sample();
                    a.id = format!("alert-{alert}");
                    a.repeat = *r;
                    *r += 1;
                    a.notice_id = a.notice_id();
                    (Arc::new(a), *fail, *refuse)
                }).collect();
                let channel = Arc::new(Scripted {
                    failures: alerts.iter().map(|(a, f, r)| (a.notice_id.clone(), (*f, *r))).collect(),
                    coalesce: coalesce.then_some(Duration::from_millis(3)),
                    attempts: Mutex::default(),
                    active: Mutex::default(),
                    overlapped: Mutex::new(false),
                    delivered: Mutex::default(),
                });
                let settings = WorkerSettings {
                    name: "test".into(),
                    backoff: Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(4) },
                    max_age: Duration::from_secs(3600),
                    max_in_flight,
                    attempt_timeout: Duration::from_secs(5),
                };
                let stats = stats();
                let (delivered, failed, pending) =
                    (Arc::clone(&stats.delivered), Arc::clone(&stats.failed), Arc::clone(&stats.pending));
                let worker = Worker::new(Arc::clone(&outbox), channel.clone(), settings, stats, Vec::new());
                let (tx, rx) = mpsc::unbounded_channel();
                let handle = tokio::spawn(worker.run(rx));
                let mut last_seq = 0;
                let per = alerts.len().div_ceil(bursts);
                for chunk in alerts.chunks(per) {
                    let rows = chunk.iter().map(|(a, _, _)| NewRowFor::pending(a)).collect();
                    let (rows, _) = outbox.insert(rows, &mut last_seq).await.unwrap();
                    tx.send(rows).unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let total = alerts.len() as u64;
                let deadline = Instant::now() + Duration::from_secs(20);
                while delivered.get() + failed.get() < total {
                    assert!(Instant::now() < deadline, "not all settled: {} + {} of {total}", delivered.get(), failed.get());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                drop(tx);
                handle.await.unwrap();

                assert!(!*channel.overlapped.lock().unwrap(), "two attempts of one alert overlapped");
                assert_eq!(pending.get(), 0);
                let refused: u64 = alerts.iter().filter(|(_, _, r)| *r).count() as u64;
                assert_eq!(failed.get(), refused, "exactly the refused ones failed");
                assert_eq!(delivered.get(), total - refused);
                // Per alert, successes in arrival order; none twice.
                let got = channel.delivered.lock().unwrap().clone();
                let mut seen = HashSet::new();
                for (alert_id, notice_id) in &got {
                    assert!(seen.insert(notice_id.clone()), "{notice_id} delivered twice");
                    let expected: Vec<&String> = alerts.iter()
                        .filter(|(a, _, r)| &a.id == alert_id && !r)
                        .map(|(a, _, _)| &a.notice_id).collect();
                    let actual: Vec<&String> = got.iter().filter(|(a, _)| a == alert_id).map(|(_, n)| n).collect();
                    assert_eq!(actual, expected, "order of {alert_id}");
                }
                // The outbox agrees: nothing pending, each row finished.
                let reopened = Outbox::open(&dir.path().join("outbox.db")).await.unwrap();
                let counts: HashMap<String, i64> = reopened.counts().await.unwrap().into_iter().collect();
                assert_eq!(counts.get("pending"), None);
                assert_eq!(counts.get("delivered").copied().unwrap_or(0) as u64, total - refused);
                assert_eq!(counts.get("failed").copied().unwrap_or(0) as u64, refused);
            });
        }
    }

    /// A channel whose first attempt hangs or panics, then succeeds.
    struct Misbehaving {
        panic: bool,
        calls: Mutex<u32>,
    }

    #[async_trait]
    impl Channel for Misbehaving {
        async fn deliver(&self, _notices: &[Arc<Alert>]) -> Result<(), DeliveryError> {
            let call = {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            if call == 1 {
                if self.panic {
                    panic!("a bug in a channel");
                }
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_or_panics_is_retried_not_stuck() {
        for panic in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let outbox = Arc::new(Outbox::open(&dir.path().join("outbox.db")).await.unwrap());
            let stats = stats();
            let (delivered, retries) = (Arc::clone(&stats.delivered), Arc::clone(&stats.retries));
            let settings = WorkerSettings {
                name: "test".into(),
                backoff: Backoff {
                    initial: Duration::from_millis(1),
                    max: Duration::from_millis(2),
                },
                max_age: Duration::from_secs(3600),
                max_in_flight: 4,
                attempt_timeout: Duration::from_millis(200),
            };
            let channel = Arc::new(Misbehaving {
                panic,
                calls: Mutex::new(0),
            });
            let worker = Worker::new(Arc::clone(&outbox), channel, settings, stats, Vec::new());
            let (tx, rx) = mpsc::unbounded_channel();
            let handle = tokio::spawn(worker.run(rx));
            let mut last_seq = 0;
            let (rows, _) = outbox
                .insert(vec![NewRowFor::pending(&Arc::new(sample()))], &mut last_seq)
                .await
                .unwrap();
            tx.send(rows).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while delivered.get() < 1 {
                assert!(Instant::now() < deadline, "stuck (panic: {panic})");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(retries.get(), 1, "panic: {panic}");
            drop(tx);
            handle.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_unreadable_stored_row_is_failed_and_the_others_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = Outbox::open(&path).await.unwrap();
        let good = Arc::new(sample());
        let bad = Arc::new(Alert {
            notice_id: "bad".into(),
            id: "other".into(),
            ..sample()
        });
        let mut last_seq = 0;
        outbox
            .insert(
                vec![NewRowFor::pending(&good), NewRowFor::pending(&bad)],
                &mut last_seq,
            )
            .await
            .unwrap();
        outbox.close().await;
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE notification_outbox SET body = '{not json' WHERE notice_id = 'bad'")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let outbox = Outbox::open(&path).await.unwrap();
        let pending = outbox.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].notice_id, good.notice_id);
        let counts: HashMap<String, i64> = outbox.counts().await.unwrap().into_iter().collect();
        assert_eq!(counts.get("failed"), Some(&1));
    }

    /// Rows for the test's inserts.
    struct NewRowFor;

    impl NewRowFor {
        fn pending(alert: &Arc<Alert>) -> super::super::outbox::NewRow {
            super::super::outbox::NewRow {
                alert: Arc::clone(alert),
                state: RowState::Pending,
                reason: None,
            }
        }
    }
}
