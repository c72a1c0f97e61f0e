//! Workflow control (CONTRACT §6): a command queued on the orchestrator's
//! Redis control stream, at most once per `Idempotency-Key` and workflow
//! within 24 hours.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowpulse_core::outage::Outage;
use flowpulse_core::redact::redact_url;
use flowpulse_core::telemetry::ComponentStats;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warp::http::StatusCode;

use super::config::ControlConfig;
use crate::http::ApiError;
use crate::redis_util::{self, connect};
use crate::sinks::util::now_rfc3339;

/// How long a command id is remembered (CONTRACT §6: 24 hours).
const COMMAND_TTL_SECS: u64 = 24 * 60 * 60;

/// How long one attempt to queue may take before the answer is 503.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the command's key only if it is new, and appends to the stream
/// only then, in one step: a retried request never queues twice, and a
/// failure between the two cannot leave one without the other.
/// KEYS: command key, stream. ARGV: maxlen, payload, ttl seconds.
/// Returns {1, stream id} when queued now, {0, stream id} when known.
const QUEUE_SCRIPT: &str = r"
local known = redis.call('GET', KEYS[1])
if known then return {0, known} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
                      'topic', 'workflow:control', 'payload', ARGV[2])
redis.call('SET', KEYS[1], id, 'EX', ARGV[3], 'NX')
return {1, id}
";

/// The namespace of command ids derived from an `Idempotency-Key`.
fn command_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:flowpulse:workflow-control")
}

/// The body of `POST /api/v1/workflows/{id}/control`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// `pause`, `resume`, `cancel` or `retry`.
    pub action: String,
    /// Why, for the orchestrator's records: at most 1,000 characters.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a queued command answers (the `data` of a 202).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ControlQueued {
    /// Always true: the command is queued.
    pub success: bool,
    /// Always `queued`: the orchestrator reports the outcome as events.
    pub status: &'static str,
    /// For people.
    pub message: String,
    /// The command's id (also the entry's `message_id`).
    pub command_id: String,
    /// The control stream entry's id.
    pub stream_id: String,
}

const ACTIONS: [&str; 4] = ["pause", "resume", "cancel", "retry"];

/// Checks a workflow id: 1–200 of `A-Za-z0-9._:-`.
pub fn check_workflow_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=200).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(
            "id",
            "a workflow id is 1 to 200 characters of A-Za-z0-9 . _ : -",
        ))
    }
}

/// Checks an `Idempotency-Key`: 1–255 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ))
    }
}

/// Queues control commands on one Redis stream.
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControlConfig,
    client: redis::Client,
    /// The shared connection, once made (cheap to clone).
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    outage: Mutex<Outage>,
    /// Whether a probe is checking for Redis to come back.
    probing: AtomicBool,
    component: String,
    script: redis::Script,
    shutdown: CancellationToken,
}

impl Control {
    /// A control queue for `config`, reconnecting on demand.
    pub fn new(
        config: &ControlConfig,
        component: &str,
        stats: &Arc<ComponentStats>,
        shutdown: CancellationToken,
    ) -> Result<Control, String> {
        let inner = Arc::new(Inner {
            client: redis_util::client(&config.url)?,
            config: config.clone(),
            conn: tokio::sync::Mutex::new(None),
            outage: Mutex::new(redis_util::outage(stats)),
            probing: AtomicBool::new(true),
            component: component.to_owned(),
            script: redis::Script::new(QUEUE_SCRIPT),
            shutdown,
        });
        // Checked at start, not at the first request: `/health` tells of a
        // Redis it cannot reach before anyone needs it.
        tokio::spawn(Arc::clone(&inner).probe());
        Ok(Control { inner })
    }

    /// Queues `request` for `workflow_id`: the answer of §6, or 400 (bad
    /// action or reason; nothing written) or 503 `control_unavailable`.
    pub async fn queue(
        &self,
        workflow_id: &str,
        request: ControlRequest,
        idempotency_key: Option<&str>,
        actor: &str,
    ) -> Result<ControlQueued, ApiError> {
        check_workflow_id(workflow_id)?;
        if !ACTIONS.contains(&request.action.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_action",
                format!("`action` must be one of {}", ACTIONS.join(", ")),
            )
            .field("action"));
        }
        if request
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > 1000)
        {
            return Err(ApiError::invalid_parameter(
                "reason",
                "at most 1,000 characters",
            ));
        }
        let command_id = match idempotency_key {
            Some(key) => {
                check_idempotency_key(key)?;
                Uuid::new_v5(
                    &command_namespace(),
                    format!("{workflow_id}\n{key}").as_bytes(),
                )
            }
            None => Uuid::new_v4(),
        }
        .to_string();
        let payload = serde_json::json!({
            "key": workflow_id,
            "msg": {
                "message_id": command_id,
                "metadata": {
                    "stage": "orchestrator:workflow:control",
                    "timestamp": now_rfc3339(),
                },
                "payload": {
                    "command_id": command_id,
                    "workflow_id": workflow_id,
                    "action": request.action,
                    "reason": request.reason,
                    "requested_by": actor,
                }
            }
        })
        .to_string();
        let command_key = format!("flowpulse:control:command:{command_id}");
        let (queued_now, stream_id) = self.inner.run_script(&command_key, &payload).await?;
        if !queued_now {
            tracing::debug!(
                workflow_id,
                command_id,
                "Idempotency-Key seen before: nothing new queued"
            );
        }
        // The same text either way: a repeated request gets the first one's
        // answer, whatever its body says (CONTRACT §6).
        let message = format!("command {command_id} for {workflow_id} queued");
        Ok(ControlQueued {
            success: true,
            status: "queued",
            message,
            command_id,
            stream_id,
        })
    }
}

impl Inner {
    /// The shared connection, made if there is none.
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.client, REDIS_TIMEOUT).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Runs the queue script: (queued now, stream id), or 503. A failure
    /// starts an outage (logged once, shown in `/health`) and a probe that
    /// ends it as soon as Redis answers again, requests or not.
    async fn run_script(
        self: &Arc<Self>,
        command_key: &str,
        payload: &str,
    ) -> Result<(bool, String), ApiError> {
        // The whole attempt, waiting for the connection included, is bounded.
        let attempt = async {
            let mut conn = self.connection().await?;
            let (queued_now, stream_id): (i64, String) = self
                .script
                .key(command_key)
                .key(&self.config.stream)
                .arg(self.config.maxlen)
                .arg(payload)
                .arg(COMMAND_TTL_SECS)
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((queued_now == 1, stream_id))
        };
        let result = tokio::time::timeout(REDIS_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))));
        match result {
            Ok(answer) => {
                self.lock_outage()
                    .recovered(&self.component, &self.config.url);
                Ok(answer)
            }
            Err(e) => {
                *self.conn.lock().await = None;
                self.lock_outage()
                    .failed(&self.component, &self.config.url, &e);
                if !self.probing.swap(true, Ordering::SeqCst) {
                    tokio::spawn(Arc::clone(self).probe());
                }
                Err(ApiError::unavailable(
                    "control_unavailable",
                    format!(
                        "cannot reach the control stream's Redis at {}; nothing was queued",
                        redact_url(&self.config.url)
                    ),
                ))
            }
        }
    }

    fn lock_outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pings Redis with backoff until it answers (ending the outage) or
    /// the pipeline stops.
    async fn probe(self: Arc<Self>) {
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let ping = async {
                let mut conn = self.connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match tokio::time::timeout(REDIS_TIMEOUT, ping).await {
                Ok(Ok(_)) => {
                    self.lock_outage()
                        .recovered(&self.component, &self.config.url);
                    break;
                }
                Ok(Err(e)) => {
                    *self.conn.lock().await = None;
                    wait = self
                        .lock_outage()
                        .failed(&self.component, &self.config.url, &e);
                }
                Err(_) => {
                    *self.conn.lock().await = None;
                    wait =
                        self.lock_outage()
                            .failed(&self.component, &self.config.url, &"timed out");
                }
            }
        }
        self.probing.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_ids_and_keys_are_checked() {
        assert!(check_workflow_id("wf-000123").is_ok());
        assert!(check_workflow_id("a.b_c:d-e").is_ok());
        assert!(check_workflow_id("").is_err());
        assert!(check_workflow_id("wf 1").is_err());
        assert!(check_workflow_id(&"w".repeat(201)).is_err());
        assert!(check_idempotency_key("k-1/2").is_ok());
        assert!(check_idempotency_key("with space").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn a_key_gives_one_command_id_per_workflow() {
        let id = |wf: &str, key: &str| {
            Uuid::new_v5(&command_namespace(), format!("{wf}\n{key}").as_bytes())
        };
        assert_eq!(id("wf-1", "k"), id("wf-1", "k"));
        assert_ne!(id("wf-1", "k"), id("wf-2", "k"));
        assert_eq!(id("wf-1", "k").get_version_num(), 5);
    }
}
