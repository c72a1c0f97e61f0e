-- Alerts and their rules (CONTRACT §5).

CREATE TABLE IF NOT EXISTS alert_rules (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    description        text NOT NULL DEFAULT '',
    enabled            boolean NOT NULL DEFAULT true,
    severity           text NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    condition          jsonb NOT NULL,
    channels           jsonb NOT NULL DEFAULT '[]',
    repeat_interval_ms bigint NULL,
    message            text NULL,
    runbook_url        text NULL,
    source             text NOT NULL DEFAULT 'api' CHECK (source IN ('config', 'api')),
    muted_until        timestamptz NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_rules_enabled ON alert_rules (enabled);
CREATE INDEX IF NOT EXISTS alert_rules_severity ON alert_rules (severity);

CREATE TABLE IF NOT EXISTS alerts (
    id                 uuid PRIMARY KEY,
    rule_id            uuid NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    instance           text NOT NULL DEFAULT '',
    severity           text NOT NULL,
    message            text NOT NULL,
    metric             text NOT NULL,
    operator           text NOT NULL,
    threshold          double precision NOT NULL,
    value              double precision NULL,
    data               jsonb NOT NULL,
    status             text NOT NULL CHECK (status IN ('triggered', 'acknowledged', 'resolved')),
    repeat             integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL,
    acknowledged_at    timestamptz NULL,
    acknowledged_until timestamptz NULL,
    resolved_at        timestamptz NULL,
    acknowledged_by    text NULL,
    resolved_by        text NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_rule_id ON alerts (rule_id);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status);
CREATE INDEX IF NOT EXISTS alerts_created_at ON alerts (created_at);
-- At most one open alert per rule and instance.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (rule_id, instance) WHERE status <> 'resolved';

CREATE TABLE IF NOT EXISTS alert_history (
    id          bigserial PRIMARY KEY,
    alert_id    uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    -- The notice this change made or answered: a notice stored twice adds one row.
    notice_id   uuid NULL UNIQUE,
    from_status text NULL,
    to_status   text NOT NULL,
    repeat      integer NOT NULL,
    actor       text NOT NULL,
    comment     text NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_alert_at ON alert_history (alert_id, at);
