//! Helpers for tests against a real Kafka-protocol broker: a Tansu broker of
//! the test's own on a free port (in memory), its topics, and the bridge and
//! worker pipelines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_helpers::free_port;

/// The Tansu binary: `FLOWPULSE_TEST_TANSU`, else where `scripts/test.sh`
/// installs it, else `tansu` on the PATH.
pub fn tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOWPULSE_TEST_TANSU") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default();
    let installed = cache.join("flowpulse/tansu-0.6.0/tansu");
    if installed.is_file() {
        return installed;
    }
    PathBuf::from("tansu")
}

/// A broker of the test's own; killed when dropped.
pub struct Broker {
    pub port: u16,
    child: Child,
}

impl Broker {
    /// Starts a broker on a free port, its log in `dir/broker.log`.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_on(dir, free_port())
    }

    /// Starts a broker on `port`.
    pub fn start_on(dir: &Path, port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("broker.log")).unwrap();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Tansu broker {} ({e}): run scripts/test.sh, which installs it, or set FLOWPULSE_TEST_TANSU",
                    tansu().display()
                )
            });
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the broker did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { port, child }
    }

    /// `host:port` for the `brokers` option.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.topic_command(&["create", topic, "--partitions", &partitions.to_string()]);
    }

    /// Deletes `topic`.
    pub fn delete_topic(&self, topic: &str) {
        self.topic_command(&["delete", topic]);
    }

    /// `tansu topic ARGS` against this broker; asserts it succeeded.
    fn topic_command(&self, args: &[&str]) {
        let output = Command::new(tansu())
            .arg("topic")
            .args(args)
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bridge: `redis_stream` (stream `PREFIX:events`) → `kafka` (`topic`).
pub fn bridge_config(
    dir: &Path,
    url: &str,
    prefix: &str,
    brokers: &str,
    topic: &str,
    source_extra: &str,
) -> PathBuf {
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "{prefix}:bridge"
data_dir = "bridge-data"
shutdown_deadline = "20s"

[sources.events]
type = "redis_stream"
url = "{url}"
stream = "{prefix}:events"
block = "200ms"
claim_idle = "2s"
lease_ttl = "2s"
{source_extra}

[sinks.log]
type = "kafka"
inputs = ["events"]
brokers = "{brokers}"
topic = "{topic}"
"#
        ),
    )
    .unwrap();
    path
}

/// A worker: `kafka` (`topic`, group `workers`) → `passthrough` → `aggregate` →
/// `redis_cache` (key `PREFIX:metrics`), checkpointed in Redis every 200 ms.
pub fn worker_config(
    dir: &Path,
    url: &str,
    prefix: &str,
    brokers: &str,
    topic: &str,
    source_extra: &str,
    aggregate_extra: &str,
) -> PathBuf {
    worker_config_slowed(
        dir,
        url,
        prefix,
        brokers,
        topic,
        source_extra,
        aggregate_extra,
        "",
    )
}

/// [`worker_config`] with options for a `passthrough` step between the
/// source and the aggregate (`delay_per_batch` slows the worker down).
#[allow(clippy::too_many_arguments)]
pub fn worker_config_slowed(
    dir: &Path,
    url: &str,
    prefix: &str,
    brokers: &str,
    topic: &str,
    source_extra: &str,
    aggregate_extra: &str,
    read_extra: &str,
) -> PathBuf {
    let path = dir.join("worker.toml");
    // A killed worker's partitions move after 6 s, not the default 45 s.
    let options = match source_extra.contains("options") {
        true => "",
        false => r#"options = { "session.timeout.ms" = "6000" }"#,
    };
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "{prefix}:worker"
data_dir = "worker-data"
shutdown_deadline = "20s"

[checkpoint]
url = "{url}"
interval = "200ms"

[sources.log]
type = "kafka"
brokers = "{brokers}"
topic = "{topic}"
group = "workers"
{options}
{source_extra}

[processors.read]
type = "passthrough"
inputs = ["log"]
{read_extra}

[processors.metrics]
type = "aggregate"
inputs = ["read"]
interval = "300ms"
history = "0s"
{aggregate_extra}

[sinks.cache]
type = "redis_cache"
url = "{url}"
key = "{prefix}:metrics"
inputs = ["metrics"]
"#
        ),
    )
    .unwrap();
    path
}
