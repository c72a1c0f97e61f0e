//! The delivery worker of one notification sink: sends pending outbox rows,
//! one alert's notices in `seq` order (a resolved never overtakes its
//! triggered), different alerts concurrently, retrying with backoff, and
//! writes the outcomes back to the outbox in batches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpulse_core::alert::Alert;
use flowpulse_core::telemetry::{Counter, Gauge};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::outbox::{now_ms, Outbox, Outcome, Pending, RowState};
use super::retry::{Backoff, DeliveryError};
use super::Channel;

/// How often finished rows past their keeping time are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

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
        let mut last_prune = Instant::now() - PRUNE_EVERY;
        loop {
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
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
        let coalesced = match (self.channel.coalesce(), self.last_sent) {
            (Some(interval), Some(last)) if !self.ready.is_empty() => Some(last + interval),
            _ => None,
        };
        match (delayed, coalesced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts what may start: one attempt per ready alert up to
    /// `max_in_flight`, or, for a coalescing channel, one message with
    /// every ready alert's notices once its interval has passed.
    fn dispatch(&mut self) {
        self.fail_expired();
        if let Some(interval) = self.channel.coalesce() {
            let quiet = self.last_sent.is_none_or(|last| last.elapsed() >= interval);
            if !self.tasks.is_empty() || !quiet || self.ready.is_empty() {
                return;
            }
            let mut rows: Vec<Pending> = Vec::new();
            while let Some(alert_id) = self.ready.pop_front() {
                if let Some(queue) = self.queues.get_mut(&alert_id) {
                    rows.extend(queue.drain(..));
                }
            }
            rows.sort_by_key(|r| r.seq);
            self.last_sent = Some(Instant::now());
            self.spawn(rows);
            return;
        }
        while self.tasks.len() < self.settings.max_in_flight {
            let Some(alert_id) = self.ready.pop_front() else {
                break;
            };
            let Some(row) = self.queues.get_mut(&alert_id).and_then(VecDeque::pop_front) else {
                continue;
            };
            self.spawn(vec![row]);
        }
    }

    fn spawn(&mut self, rows: Vec<Pending>) {
        if rows.is_empty() {
            return;
        }
        for row in &rows {
            self.in_flight.insert(row.alert_id.clone());
        }
        let channel = Arc::clone(&self.channel);
        self.tasks.spawn(async move {
            let alerts: Vec<Arc<Alert>> = rows.iter().map(|r| Arc::clone(&r.alert)).collect();
            let result = channel.deliver(&alerts).await;
            (rows, result)
        });
    }

    /// Fails the first rows of ready alerts that are past `max_age` before
    /// they are attempted again (a long outage, a long stop).
    fn fail_expired(&mut self) {
        let now = now_ms();
        let max_age = self.settings.max_age.as_millis() as i64;
        let mut expired = Vec::new();
        for alert_id in &self.ready {
            if let Some(queue) = self.queues.get_mut(alert_id) {
                while queue.front().is_some_and(|r| now - r.created_at >= max_age) {
                    if let Some(row) = queue.pop_front() {
                        expired.push(row);
                    }
                }
            }
        }
        for row in expired {
            let reason = match &row.last_error {
                Some(e) => format!("not delivered within max_age; last error: {e}"),
                None => "not delivered within max_age".to_owned(),
            };
            self.give_up(row, reason);
        }
        // Alerts left with nothing ready are forgotten or rescheduled.
        let ready = std::mem::take(&mut self.ready);
        for alert_id in ready {
            match self.queues.get(&alert_id).and_then(VecDeque::front) {
                Some(_) => self.ready.push_back(alert_id),
                None => {
                    self.queues.remove(&alert_id);
                }
            }
        }
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
                        self.give_up(
                            row,
                            format!("not delivered within max_age; last error: {reason}"),
                        );
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
