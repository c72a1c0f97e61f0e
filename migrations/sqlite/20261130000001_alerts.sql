-- Alerts and their rules (CONTRACT §5). uuid, JSON and timestamps (RFC 3339
-- UTC with milliseconds) are text; booleans are integers.

CREATE TABLE IF NOT EXISTS alert_rules (
    id                 text PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    description        text NOT NULL DEFAULT '',
    enabled            integer NOT NULL DEFAULT 1,
    severity           text NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    condition          text NOT NULL,
    channels           text NOT NULL DEFAULT '[]',
    repeat_interval_ms integer NULL,
    message            text NULL,
    runbook_url        text NULL,
    source             text NOT NULL DEFAULT 'api' CHECK (source IN ('config', 'api')),
    muted_until        text NULL,
    created_at         text NOT NULL,
    updated_at         text NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_rules_enabled ON alert_rules (enabled);
CREATE INDEX IF NOT EXISTS alert_rules_severity ON alert_rules (severity);

CREATE TABLE IF NOT EXISTS alerts (
    id                 text PRIMARY KEY,
    rule_id            text NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    instance           text NOT NULL DEFAULT '',
    severity           text NOT NULL,
    message            text NOT NULL,
    metric             text NOT NULL,
    operator           text NOT NULL,
    threshold          real NOT NULL,
    value              real NULL,
    data               text NOT NULL,
    status             text NOT NULL CHECK (status IN ('triggered', 'acknowledged', 'resolved')),
    repeat             integer NOT NULL DEFAULT 0,
    created_at         text NOT NULL,
    acknowledged_at    text NULL,
    acknowledged_until text NULL,
    resolved_at        text NULL,
    acknowledged_by    text NULL,
    resolved_by        text NULL,
    updated_at         text NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_rule_id ON alerts (rule_id);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status);
CREATE INDEX IF NOT EXISTS alerts_created_at ON alerts (created_at);
-- At most one open alert per rule and instance.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (rule_id, instance) WHERE status <> 'resolved';

CREATE TABLE IF NOT EXISTS alert_history (
    id          integer PRIMARY KEY AUTOINCREMENT,
    alert_id    text NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    -- The notice this change made or answered: a notice stored twice adds one row.
    notice_id   text NULL UNIQUE,
    from_status text NULL,
    to_status   text NOT NULL,
    repeat      integer NOT NULL,
    actor       text NOT NULL,
    comment     text NULL,
    at          text NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_alert_at ON alert_history (alert_id, at);
