//! The durable outbox of one notification sink (CONTRACT §5
//! `notification_outbox`): a SQLite file of the sink's own, in WAL with
//! `synchronous = NORMAL`, so notices survive a crash and keep flowing while
//! the alert database is down.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowpulse_core::alert::Alert;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row as _;

/// How long finished rows (delivered, failed, skipped) are kept.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The state of one outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Waiting for (another) delivery attempt.
    Pending,
    /// Taken by the receiver.
    Delivered,
    /// Given up: refused by the receiver, or not delivered within `max_age`.
    Failed,
    /// Not sent on purpose: muted, or older than `max_notify_lag`.
    Skipped,
}

impl RowState {
    /// The `state` column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Delivered => "delivered",
            RowState::Failed => "failed",
            RowState::Skipped => "skipped",
        }
    }
}

/// A notice waiting for delivery, as the delivery worker keeps it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The notice id (the receiver's idempotency key).
    pub notice_id: String,
    /// The alert it is about: its notices go out in `seq` order.
    pub alert_id: String,
    /// Arrival order.
    pub seq: i64,
    /// The notice.
    pub alert: Arc<Alert>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix ms of the next attempt.
    pub next_attempt_at: i64,
    /// Unix ms it was taken into the outbox.
    pub created_at: i64,
    /// The latest failure, if any.
    pub last_error: Option<String>,
    /// Sent in a message of its own: a coalesced message holding it was
    /// refused, so the one the receiver refuses is found.
    pub alone: bool,
}

/// A notice to insert: pending, or skipped with a reason.
pub struct NewRow {
    /// The notice.
    pub alert: Arc<Alert>,
    /// `Pending` or `Skipped`.
    pub state: RowState,
    /// Why it was skipped.
    pub reason: Option<String>,
}

/// What became of one delivery attempt, to be written back.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The row.
    pub notice_id: String,
    /// Its state afterwards.
    pub state: RowState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix ms of the next attempt (pending rows).
    pub next_attempt_at: i64,
    /// The failure, if it failed.
    pub last_error: Option<String>,
    /// Unix ms it finished (not pending).
    pub done_at: Option<i64>,
}

/// An outbox problem.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused or failed.
    #[error("outbox {path}: {source}")]
    Db {
        /// The file.
        path: String,
        /// What went wrong.
        source: sqlx::Error,
    },
    /// Its schema could not be brought up to date.
    #[error("outbox {path}: cannot migrate: {source}")]
    Migrate {
        /// The file.
        path: String,
        /// What went wrong.
        source: sqlx::migrate::MigrateError,
    },
    /// A stored body is not an Alert (edited by hand, or a future version).
    #[error("outbox {path}: notice {notice_id} is not readable: {message}")]
    Body {
        /// The file.
        path: String,
        /// The row.
        notice_id: String,
        /// The parse error.
        message: String,
    },
}

/// One sink's outbox file.
pub struct Outbox {
    pool: SqlitePool,
    path: String,
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Outbox {
    /// Opens (creating it and its directory if needed) the outbox at `path`
    /// and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Outbox, OutboxError> {
        let shown = path.display().to_string();
        let db = |source| OutboxError::Db {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| db(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL survives a process crash; only a power loss
            // may take the newest commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        // One writer at a time is all SQLite allows; a second connection
        // lets reads of /status run beside a write.
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("../migrations/outbox")
            .run(&pool)
            .await
            .map_err(|source| OutboxError::Migrate {
                path: shown.clone(),
                source,
            })?;
        Ok(Outbox { pool, path: shown })
    }

    fn db(&self, source: sqlx::Error) -> OutboxError {
        OutboxError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// The highest `seq` used so far (0 for a new outbox).
    pub async fn last_seq(&self) -> Result<i64, OutboxError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM notification_outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        row.try_get::<i64, _>(0).map_err(|e| self.db(e))
    }

    /// Inserts `rows` in one transaction, numbering them after `last_seq`
    /// (which it advances); a notice already in the outbox is left as it
    /// is. Returns the pending rows actually inserted (for the delivery
    /// worker) and how many skipped ones were.
    pub async fn insert(
        &self,
        rows: Vec<NewRow>,
        last_seq: &mut i64,
    ) -> Result<(Vec<Pending>, usize), OutboxError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let mut inserted = Vec::new();
        let mut skipped = 0;
        for row in rows {
            let body =
                serde_json::to_string(row.alert.as_ref()).map_err(|e| OutboxError::Body {
                    path: self.path.clone(),
                    notice_id: row.alert.notice_id.clone(),
                    message: e.to_string(),
                })?;
            let seq = *last_seq + 1;
            let done_at = (row.state != RowState::Pending).then_some(now);
            let result = sqlx::query(
                "INSERT INTO notification_outbox \
                 (notice_id, alert_id, seq, body, state, attempts, next_attempt_at, last_error, created_at, done_at) \
                 VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?) ON CONFLICT (notice_id) DO NOTHING",
            )
            .bind(&row.alert.notice_id)
            .bind(&row.alert.id)
            .bind(seq)
            .bind(&body)
            .bind(row.state.as_str())
            .bind(now)
            .bind(&row.reason)
            .bind(now)
            .bind(done_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            if result.rows_affected() == 0 {
                continue;
            }
            *last_seq = seq;
            if row.state != RowState::Pending {
                skipped += 1;
            } else {
                inserted.push(Pending {
                    notice_id: row.alert.notice_id.clone(),
                    alert_id: row.alert.id.clone(),
                    seq,
                    alert: row.alert,
                    attempts: 0,
                    next_attempt_at: now,
                    created_at: now,
                    last_error: None,
                    alone: false,
                });
            }
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok((inserted, skipped))
    }

    /// Every pending row, in `seq` order: what a restart resumes.
    pub async fn pending(&self) -> Result<Vec<Pending>, OutboxError> {
        let rows = sqlx::query(
            "SELECT notice_id, alert_id, seq, body, attempts, next_attempt_at, created_at, last_error \
             FROM notification_outbox WHERE state = 'pending' ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        let mut pending = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in rows {
            let notice_id: String = row.try_get(0).map_err(|e| self.db(e))?;
            let body: String = row.try_get(3).map_err(|e| self.db(e))?;
            // A row no longer readable (edited by hand, written by a newer
            // version) is failed with the reason; the others still go out.
            let alert: Alert = match serde_json::from_str(&body) {
                Ok(alert) => alert,
                Err(e) => {
                    unreadable.push(Outcome {
                        notice_id,
                        state: RowState::Failed,
                        attempts: 0,
                        next_attempt_at: now_ms(),
                        last_error: Some(format!("the stored notice is not readable: {e}")),
                        done_at: Some(now_ms()),
                    });
                    continue;
                }
            };
            pending.push(Pending {
                notice_id,
                alert_id: row.try_get(1).map_err(|e| self.db(e))?,
                seq: row.try_get(2).map_err(|e| self.db(e))?,
                alert: Arc::new(alert),
                attempts: row
                    .try_get::<i64, _>(4)
                    .map_err(|e| self.db(e))?
                    .clamp(0, i64::from(u32::MAX)) as u32,
                next_attempt_at: row.try_get(5).map_err(|e| self.db(e))?,
                created_at: row.try_get(6).map_err(|e| self.db(e))?,
                last_error: row.try_get(7).map_err(|e| self.db(e))?,
                alone: false,
            });
        }
        for bad in &unreadable {
            tracing::warn!(outbox = %self.path, notice_id = %bad.notice_id, "{}", bad.last_error.as_deref().unwrap_or(""));
        }
        self.record(&unreadable).await?;
        Ok(pending)
    }

    /// Writes the outcomes of delivery attempts back, in one transaction.
    pub async fn record(&self, outcomes: &[Outcome]) -> Result<(), OutboxError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        for o in outcomes {
            sqlx::query(
                "UPDATE notification_outbox SET state = ?, attempts = ?, next_attempt_at = ?, \
                 last_error = ?, done_at = ? WHERE notice_id = ?",
            )
            .bind(o.state.as_str())
            .bind(i64::from(o.attempts))
            .bind(o.next_attempt_at)
            .bind(&o.last_error)
            .bind(o.done_at)
            .bind(&o.notice_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))
    }

    /// Deletes finished rows older than [`KEEP_FINISHED`]; how many.
    pub async fn prune(&self) -> Result<u64, OutboxError> {
        let before = now_ms() - KEEP_FINISHED.as_millis() as i64;
        sqlx::query("DELETE FROM notification_outbox WHERE state <> 'pending' AND done_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.db(e))
    }

    /// Rows by state, for `/status` and tests.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, OutboxError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) FROM notification_outbox GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.db(e))
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
