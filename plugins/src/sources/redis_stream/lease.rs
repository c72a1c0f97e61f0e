//! The group's reader lease: a `redis_stream` source feeding a stateful
//! processor must be its consumer group's only reader, because the
//! processor's checkpoint keeps one position per stream ("everything up to
//! this entry id is folded"), which is only safe if nothing older arrives
//! after it.
//!
//! The lease is one Redis key holding `NONCE:CONSUMER` with a TTL. A reader
//! takes it with `SET NX PX`; one with the same consumer name takes it over
//! at once (a restart of the same instance); one with another name waits,
//! saying who holds it, until it expires. The holder renews it from a task
//! of its own (so backpressure never lets it lapse) and, if it finds the
//! lease taken, reports it lost: the source then stops and fails.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::redis_util::connect;

/// Renews the lease if this reader still holds it; 0 if it does not (taken
/// by another reader, or lapsed: another may have held and released it
/// meanwhile, so a lapsed lease is never taken back).
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Takes over a lease held under this consumer's name (a restart of it),
/// only if it is still the value seen, so two starting at once cannot both.
const TAKE_OVER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Deletes the lease if this reader holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The key of the lease on `stream` for `group`.
pub fn lease_key(stream: &str, group: &str) -> String {
    format!("flowpulse:lease:{group}:{stream}")
}

/// The consumer holding the lease at `key`, and in how many ms it lapses
/// unless renewed; `None` if nobody holds it.
pub async fn holder(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<(String, u64)>> {
    let (value, left): (Option<String>, i64) = redis::pipe()
        .cmd("GET")
        .arg(key)
        .cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await?;
    Ok(value.map(|v| (holder_of(&v).to_owned(), left.max(0) as u64)))
}

/// A held lease, renewed in the background until released or lost.
pub struct Lease {
    client: redis::Client,
    key: String,
    value: String,
    /// Cancelled when the lease is found taken by another reader.
    lost: CancellationToken,
    renewals: tokio::task::JoinHandle<()>,
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The consumer named in a lease value.
fn holder_of(value: &str) -> &str {
    value
        .split_once(':')
        .map_or(value, |(_, consumer)| consumer)
}

/// Takes the lease for `consumer`, waiting while another consumer holds it;
/// `None` if shutdown came first.
#[allow(clippy::too_many_arguments)]
pub async fn acquire(
    client: &redis::Client,
    url: &str,
    conn: &mut MultiplexedConnection,
    key: &str,
    consumer: &str,
    ttl: Duration,
    source: &str,
    shutdown: &CancellationToken,
) -> redis::RedisResult<Option<Lease>> {
    let value = format!("{}:{consumer}", nonce());
    let ttl_ms = ttl.as_millis() as u64;
    let mut waiting_for: Option<String> = None;
    loop {
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(conn)
            .await?;
        if taken.is_some() {
            break;
        }
        let holder: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
        match holder {
            Some(holder) if holder_of(&holder) == consumer => {
                // Our own name: a previous run of this consumer that died.
                let taken: i64 = redis::cmd("EVAL")
                    .arg(TAKE_OVER)
                    .arg(1)
                    .arg(key)
                    .arg(&holder)
                    .arg(&value)
                    .arg(ttl_ms)
                    .query_async(conn)
                    .await?;
                if taken == 1 {
                    tracing::info!(
                        source,
                        lease = key,
                        "took over the reader lease from an earlier run of consumer \"{consumer}\""
                    );
                    break;
                }
            }
            Some(holder) => {
                let name = holder_of(&holder).to_owned();
                if waiting_for.as_deref() != Some(name.as_str()) {
                    let left: i64 = redis::cmd("PTTL").arg(key).query_async(conn).await?;
                    tracing::warn!(
                        source,
                        lease = key,
                        "another reader (consumer \"{name}\") holds this group's lease; waiting until it expires (in {} ms) or is released",
                        left.max(0)
                    );
                    waiting_for = Some(name);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(ttl / 4) => {}
                }
            }
            // Expired between the two commands: try again at once.
            None => {}
        }
    }
    let lost = CancellationToken::new();
    let renewals = tokio::spawn(renew(
        client.clone(),
        url.to_owned(),
        key.to_owned(),
        value.clone(),
        ttl,
        source.to_owned(),
        lost.clone(),
    ));
    tracing::info!(source, lease = key, "holding the reader lease");
    Ok(Some(Lease {
        client: client.clone(),
        key: key.to_owned(),
        value,
        lost,
        renewals,
    }))
}

/// Renews every third of the TTL until the lease is found taken, or no
/// renewal has succeeded for so long that it may have lapsed (a partition
/// from Redis): either way it is lost, and reading stops.
async fn renew(
    client: redis::Client,
    url: String,
    key: String,
    value: String,
    ttl: Duration,
    source: String,
    lost: CancellationToken,
) {
    let mut outage = flowpulse_core::outage::Outage::new("Redis");
    let mut conn: Option<MultiplexedConnection> = None;
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        // A sixth of the TTL short of its expiry, with no renewal: another
        // reader may take it any moment.
        if renewed_at.elapsed() >= ttl - ttl / 6 {
            tracing::error!(source = %source, lease = %key, "could not renew the reader lease before it could lapse; stopping");
            lost.cancel();
            return;
        }
        let renewed: redis::RedisResult<i64> = async {
            if conn.is_none() {
                conn = Some(connect(&client, ttl / 3).await?);
            }
            match conn.as_mut() {
                Some(c) => {
                    redis::cmd("EVAL")
                        .arg(RENEW)
                        .arg(1)
                        .arg(&key)
                        .arg(&value)
                        .arg(ttl.as_millis() as u64)
                        .query_async(c)
                        .await
                }
                None => Ok(1),
            }
        }
        .await;
        match renewed {
            Ok(0) => {
                tracing::error!(source = %source, lease = %key, "the reader lease was taken by another reader; stopping");
                lost.cancel();
                return;
            }
            Ok(_) => {
                renewed_at = tokio::time::Instant::now();
                outage.recovered(&source, &url);
            }
            Err(e) => {
                conn = None;
                outage.failed(&source, &url, &e);
            }
        }
    }
}

impl Lease {
    /// Cancelled once the lease is lost to another reader.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and deletes the lease (if still ours), so a successor
    /// need not wait for it to expire.
    pub async fn release(self) {
        self.renewals.abort();
        let released: redis::RedisResult<i64> = async {
            let mut conn = connect(&self.client, Duration::from_secs(5)).await?;
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(&self.key)
                .arg(&self.value)
                .query_async(&mut conn)
                .await
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(lease = %self.key, "cannot release the reader lease ({e}); it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_the_consumer_after_the_nonce() {
        assert_eq!(holder_of("00ff:host-a"), "host-a");
        assert_eq!(holder_of("00ff:name:with:colons"), "name:with:colons");
    }
}
