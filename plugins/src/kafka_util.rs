//! What the `kafka` source and sink share: client settings, the headers that
//! carry a record's upstream position, and checks of user-given options.

use std::collections::BTreeMap;

use flowpulse_core::plugin::FieldError;
use rdkafka::ClientConfig;

/// Header naming the partition a record came from upstream
/// (`SOURCE/PARTITION`, e.g. `events/orchestrator:events`).
pub const UPSTREAM_HEADER: &str = "flowpulse-upstream";

/// Header holding the record's position in that partition (decimal; a Redis
/// entry id `ms-seq` is `ms << 64 | seq`).
pub const POSITION_HEADER: &str = "flowpulse-position";

/// librdkafka properties Flowpulse sets itself for its guarantees; `options`
/// may not change them.
pub fn reserved(keys: &[&'static str], options: &BTreeMap<String, String>) -> Vec<FieldError> {
    options
        .keys()
        .filter(|key| keys.contains(&key.to_ascii_lowercase().as_str()))
        .map(|key| {
            FieldError::new(
                "options",
                format!(
                    "`{key}` is set by Flowpulse for its delivery guarantees and cannot be changed"
                ),
            )
        })
        .collect()
}

/// Checks a `brokers` list: `host:port`, comma-separated.
pub fn check_brokers(brokers: &str) -> Option<FieldError> {
    let bad = brokers.split(',').map(str::trim).find(|b| {
        b.rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    });
    match (brokers.trim().is_empty(), bad) {
        (true, _) => Some(FieldError::new(
            "brokers",
            "must name at least one broker, e.g. \"127.0.0.1:9092\"",
        )),
        (false, Some(b)) => Some(FieldError::new(
            "brokers",
            format!("`{b}` is not host:port (e.g. \"127.0.0.1:9092\")"),
        )),
        (false, None) => None,
    }
}

/// The checks every Kafka component's config shares: its brokers, its topic
/// and the options it may not change.
pub fn check_common(
    brokers: &str,
    topic: &str,
    options: &BTreeMap<String, String>,
    reserved_keys: &[&'static str],
) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = check_brokers(brokers).into_iter().collect();
    if topic.trim().is_empty() {
        errors.push(FieldError::new("topic", "must not be empty"));
    }
    errors.extend(reserved(reserved_keys, options));
    errors.extend(check_options(options));
    errors
}

/// Checks `options` the way librdkafka will when the client is made (known
/// property names, valid values), without connecting anywhere.
pub fn check_options(options: &BTreeMap<String, String>) -> Vec<FieldError> {
    options
        .iter()
        .filter_map(|(key, value)| {
            let mut config = ClientConfig::new();
            config.set(key, value);
            config.create_native_config().err().map(|e| {
                // librdkafka's message names the property and says what is
                // wrong; values never appear in it for secrets it knows.
                FieldError::new("options", format!("`{key}`: {e}"))
            })
        })
        .collect()
}

/// A client config with `brokers`, then the user's `options`, then `fixed`
/// (the reserved ones, validated not to clash).
pub fn client_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
    fixed: &[(&str, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in options {
        config.set(key, value);
    }
    for (key, value) in fixed {
        config.set(*key, value);
    }
    config
}

/// The `brokers` list as logs show it (it never holds credentials: those go
/// in `options`, which are never logged).
pub fn display_brokers(brokers: &str) -> String {
    format!("kafka://{brokers}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_must_be_host_and_port() {
        assert!(check_brokers("127.0.0.1:9092, kafka-2:9093").is_none());
        let e = check_brokers("127.0.0.1").unwrap();
        assert!(
            e.message.contains("`127.0.0.1` is not host:port"),
            "{}",
            e.message
        );
        assert!(check_brokers("a:99999").is_some());
        assert!(check_brokers(" ").unwrap().message.contains("at least one"));
    }

    #[test]
    fn options_librdkafka_would_refuse_are_refused_with_their_name() {
        let options = BTreeMap::from([
            ("no.such.property".to_owned(), "1".to_owned()),
            ("compression.type".to_owned(), "zzz".to_owned()),
            ("linger.ms".to_owned(), "5".to_owned()),
        ]);
        let errors = check_options(&options);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.message.contains("`no.such.property`")));
        assert!(errors
            .iter()
            .any(|e| e.message.contains("`compression.type`")));
    }

    #[test]
    fn reserved_options_are_refused_by_name() {
        let options = BTreeMap::from([
            ("acks".to_owned(), "1".to_owned()),
            ("linger.ms".to_owned(), "20".to_owned()),
        ]);
        let errors = reserved(&["acks", "enable.idempotence"], &options);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("`acks`"));
    }
}
