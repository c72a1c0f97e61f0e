//! What every Redis plugin shares: connecting with a response timeout,
//! reading replies, and how an outage of the server is logged.

use std::time::Duration;

use flowpulse_core::outage::Outage;
use flowpulse_core::redact::redact_url;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

/// Opens a client for `url` (`redis://` or `rediss://`, ACL user and password
/// in the URL). The error never contains the password.
pub fn client(url: &str) -> Result<Client, String> {
    Client::open(url)
        .map_err(|e| format!("invalid Redis URL {}: {}", redact_url(url), e.kind_str()))
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// A multiplexed connection whose commands time out after `response_timeout`.
pub async fn connect(
    client: &Client,
    response_timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Fails unless the server is Redis 7.0 or newer.
pub async fn require_redis_7(conn: &mut MultiplexedConnection) -> Result<(), String> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 7 {
        return Err(format!(
            "Redis {version} is too old: Flowpulse needs Redis 7.0 or newer"
        ));
    }
    Ok(())
}

/// An outage of the Redis server, logged once with the hint
/// "is Redis running?" and shown in the component's telemetry (see
/// [`Outage`]).
pub fn outage(stats: &std::sync::Arc<flowpulse_core::telemetry::ComponentStats>) -> Outage {
    Outage::new("Redis").reporting_to(std::sync::Arc::clone(stats))
}

/// A reply as bytes (bulk or simple string).
pub fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A reply as a UTF-8 string.
pub fn string(value: &Value) -> Option<String> {
    bytes(value).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A reply as an integer.
pub fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => string(other)?.parse().ok(),
    }
}

/// A reply as a list.
pub fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`1700000000000-0`).
    pub id: String,
    /// Field/value pairs in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Parses `[[id, [f, v, …]], …]` (XRANGE, XAUTOCLAIM's entries).
pub fn entries(value: &Value) -> Vec<StreamEntry> {
    array(value)
        .iter()
        .filter_map(|entry| {
            let parts = array(entry);
            let id = string(parts.first()?)?;
            let flat = parts.get(1).map(array).unwrap_or(&[]);
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((bytes(kv.first()?)?.to_vec(), bytes(kv.get(1)?)?.to_vec())))
                .collect();
            Some(StreamEntry { id, fields })
        })
        .collect()
}

/// Parses an XREADGROUP reply (`[[stream, entries]]`, or nil on timeout).
pub fn read_reply(value: &Value) -> Vec<StreamEntry> {
    match value {
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        other => array(other)
            .iter()
            .flat_map(|stream| array(stream).get(1).map(entries).unwrap_or_default())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_read_reply() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("topic"), bulk("t"), bulk("payload"), bulk("{}")]),
            ])]),
        ])]);
        let parsed = read_reply(&reply);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].id, "1-0");
        assert_eq!(parsed[0].fields[1], (b"payload".to_vec(), b"{}".to_vec()));
        assert!(read_reply(&Value::Nil).is_empty());
    }
}
