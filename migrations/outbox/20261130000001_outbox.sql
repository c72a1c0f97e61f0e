-- A notification sink's own outbox (CONTRACT §5 `notification_outbox`):
-- one SQLite file per sink, DATA_DIR/SINK/outbox.db.
CREATE TABLE IF NOT EXISTS notification_outbox (
    notice_id       TEXT PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT NULL,
    created_at      INTEGER NOT NULL,
    done_at         INTEGER NULL
);
CREATE INDEX IF NOT EXISTS notification_outbox_due ON notification_outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS notification_outbox_alert ON notification_outbox (alert_id, seq);
