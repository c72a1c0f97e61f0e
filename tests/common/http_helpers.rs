//! Running the real binary with HTTP sinks on a free port, and reading its
//! bound address and token from what it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{run_command, terminate};

/// Polls `GET path` of `server` until `done` holds of its JSON body, and
/// returns that body; fails naming `what` if it does not within `limit`.
pub async fn poll_json(
    server: &Running,
    path: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        let body: serde_json::Value = http
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `flowpulse` with HTTP sinks.
pub struct Running {
    /// The process (killed on drop unless stopped).
    pub child: Option<Child>,
    /// The bound address of its (first) server.
    pub addr: SocketAddr,
    /// The token it showed at start, if it showed one.
    pub shown_token: Option<String>,
    /// Every line it wrote to standard error so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://ADDR` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit.
    pub fn stop(self) -> ExitStatus {
        terminate(self.child.as_ref().expect("running"));
        self.wait()
    }

    /// Waits (at most 30 s) for the exit.
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("flowpulse did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JSON log lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with('{'))
            .cloned()
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `flowpulse run -c config` in `dir` and waits until it logs
/// `listening` (with the bound address) and `pipeline started`.
pub fn start(dir: &Path, config: &Path) -> Running {
    start_waiting(dir, config, true)
}

/// The same, waiting only until it listens (the pipeline may still be
/// waiting for a lease or a server).
pub fn start_listening(dir: &Path, config: &Path) -> Running {
    start_waiting(dir, config, false)
}

fn start_waiting(dir: &Path, config: &Path, until_started: bool) -> Running {
    let mut child = run_command(dir, config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn flowpulse");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let collected = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            collected.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (addr, started, token) = {
            let lines = lines.lock().unwrap();
            let addr = lines.iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == "listening")
                    .then(|| v["fields"]["address"].as_str()?.parse::<SocketAddr>().ok())?
            });
            let started = !until_started || lines.iter().any(|l| l.contains("pipeline started"));
            let token = lines
                .iter()
                .position(|l| l.starts_with("API token for"))
                .and_then(|i| lines.get(i + 1))
                .map(|l| l.trim().to_owned());
            (addr, started, token)
        };
        if let (Some(addr), true) = (addr, started) {
            return Running {
                child: Some(child),
                addr,
                shown_token: token,
                stderr: lines,
            };
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "flowpulse exited ({status}) before listening:\n{}",
                lines.lock().unwrap().join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "flowpulse did not start listening within 30 s:\n{}",
            lines.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config: a demo source (`demo_extra` appended), an aggregate emitting
/// every `interval`, and `sinks` (TOML) appended.
pub fn write_config(dir: &Path, demo_extra: &str, interval: &str, sinks: &str) -> PathBuf {
    let text = format!(
        r#"[pipeline]
name = "http-test"
data_dir = "{data}"
shutdown_deadline = "10s"

[sources.demo]
type = "demo"
rate = 200
seed = 3
{demo_extra}

[processors.metrics]
type = "aggregate"
inputs = ["demo"]
interval = "{interval}"

{sinks}
"#,
        data = dir.join("data").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `rest` and a `websocket` sink sharing `127.0.0.1:0`, with `extra`
/// options on both.
pub fn rest_and_websocket(extra: &str) -> String {
    format!(
        r#"[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
{extra}

[sinks.live]
type = "websocket"
inputs = ["metrics", "demo"]
address = "127.0.0.1:0"
{extra}
"#
    )
}
