//! Acknowledging entries (`XACK`) beside reading them.
//!
//! A checkpoint releases a whole interval of entries at once (a quarter of a
//! million in a second of catch-up). Sent as one pipeline, Redis would run
//! all of those XACKs back to back while the reads waited, and the source
//! would wait for the reply before handing on another batch: reading stalled
//! for a fifth of every second. So acknowledgements go to a task of their
//! own, on a connection of their own, one bounded XACK at a time: Redis
//! interleaves them with the reads, and the source never waits for them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flowpulse_core::telemetry::ComponentStats;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{entry_key, lock_ids, SharedIds};
use crate::redis_util::{self, connect};

/// Most entry ids in one XACK: enough that one round trip carries plenty,
/// few enough (about 0.2 ms of Redis's time during a catch-up) that a read
/// never waits long behind one.
const ACK_CHUNK: usize = 500;

/// How often an acknowledgement is retried once the source has stopped
/// (while it runs, it is retried until Redis is back).
const ATTEMPTS_AT_SHUTDOWN: u32 = 5;

/// What the acknowledging task needs to know of the stream.
pub(super) struct AckTarget {
    pub client: redis::Client,
    pub url: String,
    pub stream: String,
    pub group: String,
    pub component: String,
    /// The source's entries in flight: ids queued here stay in it until
    /// Redis has acknowledged them, so no claim takes them back meanwhile
    /// (they are still pending, and may have been for longer than
    /// `claim_idle`).
    pub held: SharedIds,
}

/// The handle of the acknowledging task: entry ids sent here are
/// acknowledged in the order given.
pub(super) struct Acker {
    tx: mpsc::UnboundedSender<Vec<String>>,
    task: JoinHandle<()>,
    held: SharedIds,
}

impl Acker {
    /// Starts the task.
    pub fn start(target: AckTarget, stats: &Arc<ComponentStats>) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        // The source logs this server's outage; this only backs off.
        let outage = redis_util::outage(stats).unlogged();
        let held = Arc::clone(&target.held);
        let task = tokio::spawn(run(target, rx, outage));
        Acker { tx, task, held }
    }

    /// Queues `ids`, all held in flight already, for acknowledgement.
    pub fn ack(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            // The task outlives every sender; a send fails only if it
            // panicked, and then the entries are re-read after a restart.
            let _ = self.tx.send(ids);
        }
    }

    /// Queues `ids` for acknowledgement, holding them in flight until then.
    pub fn ack_untracked(&self, ids: Vec<String>) {
        lock_ids(&self.held).extend(ids.iter().map(|id| entry_key(id)));
        self.ack(ids);
    }

    /// Stops at once, acknowledging nothing more.
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Acknowledges what is queued (retrying a few times if Redis is
    /// unreachable) and stops.
    pub async fn finish(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::warn!("the acknowledging task stopped: {e}");
        }
    }
}

async fn run(
    target: AckTarget,
    mut rx: mpsc::UnboundedReceiver<Vec<String>>,
    mut outage: flowpulse_core::outage::Outage,
) {
    let mut queue: VecDeque<String> = VecDeque::new();
    // The XACK being sent, kept until Redis has taken it.
    let mut chunk: Vec<String> = Vec::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut attempts = 0;
    loop {
        if chunk.is_empty() {
            if queue.is_empty() {
                match rx.recv().await {
                    Some(ids) => queue.extend(ids),
                    None => return,
                }
            }
            while let Ok(ids) = rx.try_recv() {
                queue.extend(ids);
            }
            let take = queue.len().min(ACK_CHUNK);
            chunk.extend(queue.drain(..take));
        }
        match ack(&target, &mut conn, &chunk).await {
            Ok(()) => {
                outage.recovered(&target.component, &target.url);
                let mut held = lock_ids(&target.held);
                for id in &chunk {
                    held.remove(&entry_key(id));
                }
                drop(held);
                chunk.clear();
                attempts = 0;
            }
            Err(e) => {
                conn = None;
                attempts += 1;
                if rx.is_closed() && attempts >= ATTEMPTS_AT_SHUTDOWN {
                    let mut left = chunk.len() + queue.len();
                    while let Ok(ids) = rx.try_recv() {
                        left += ids.len();
                    }
                    tracing::warn!(
                        source = %target.component,
                        "could not acknowledge {left} entries at shutdown ({e}); they will be re-read (and skipped if already folded into a checkpoint)"
                    );
                    return;
                }
                let wait = outage.failed(&target.component, &target.url, &e);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One XACK of `ids`, connecting first if need be.
async fn ack(
    target: &AckTarget,
    conn: &mut Option<MultiplexedConnection>,
    ids: &[String],
) -> redis::RedisResult<()> {
    if conn.is_none() {
        *conn = Some(connect(&target.client, Duration::from_secs(10)).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    redis::cmd("XACK")
        .arg(&target.stream)
        .arg(&target.group)
        .arg(ids)
        .query_async::<i64>(c)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> String {
        std::env::var("FLOWPULSE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    fn target(url: &str, stream: &str) -> AckTarget {
        AckTarget {
            client: redis::Client::open(url).unwrap(),
            url: url.to_owned(),
            stream: stream.to_owned(),
            group: "g".to_owned(),
            component: "events".to_owned(),
            held: Default::default(),
        }
    }

    async fn pending(conn: &mut MultiplexedConnection, stream: &str) -> i64 {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg("g")
            .query_async(conn)
            .await
            .unwrap();
        crate::redis_util::array(&reply)
            .first()
            .and_then(crate::redis_util::int)
            .unwrap()
    }

    /// More entries than two XACKs carry, queued in uneven lots, all end
    /// acknowledged once the acker finishes.
    #[tokio::test]
    async fn every_queued_id_is_acknowledged_in_bounded_commands() {
        let url = redis_url();
        let stream = format!("fp-test:acker:{}", std::process::id());
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = connect(&client, Duration::from_secs(5)).await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        let n = 2 * ACK_CHUNK + 234;
        let mut ids = Vec::new();
        for i in 0..n {
            let id: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("i")
                .arg(i)
                .query_async(&mut conn)
                .await
                .unwrap();
            ids.push(id);
        }
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("g")
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(pending(&mut conn, &stream).await, n as i64);

        let stats = Arc::new(ComponentStats::default());
        let target = target(&url, &stream);
        let held = Arc::clone(&target.held);
        let acker = Acker::start(target, &stats);
        let rest = ids.split_off(7);
        acker.ack_untracked(ids);
        acker.ack(Vec::new());
        acker.ack_untracked(rest);
        acker.finish().await;
        assert_eq!(pending(&mut conn, &stream).await, 0);
        // Held in flight until acknowledged, then let go of.
        assert!(lock_ids(&held).is_empty());
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// With Redis unreachable, stopping gives up after a few attempts
    /// instead of hanging the shutdown, and shows the outage meanwhile.
    #[tokio::test]
    async fn an_unreachable_server_does_not_hold_up_shutdown() {
        // A port nobody listens on.
        let url = "redis://127.0.0.1:1";
        let stats = Arc::new(ComponentStats::default());
        let acker = Acker::start(target(url, "s"), &stats);
        acker.ack(vec!["1-0".to_owned()]);
        tokio::time::timeout(Duration::from_secs(30), acker.finish())
            .await
            .expect("finish gave up within 30 s");
        let outage = stats.outage().expect("the outage is shown");
        assert!(outage.contains("127.0.0.1:1"), "{outage}");
    }
}
