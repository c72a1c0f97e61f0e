//! The dashboard in a real browser: Debian's Chromium, headless, driven
//! through chromedriver with fantoccini, against the real binary. One test
//! (one browser at a time) walks through every panel in turn.
//!
//! Needs `chromium` and `chromedriver` (`apt-get install chromium
//! chromium-driver`; `scripts/test.sh` installs them when it can).

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_helpers::{start, Running};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const TOKEN: &str = "dashboard-test-token-0123456789";

/// A TCP proxy that understands just enough HTTP to tell WebSocket upgrades
/// from plain requests: while `block_ws` is set, it cuts every upgraded
/// connection and answers new upgrades 503, and plain requests still pass.
struct WsProxy {
    addr: SocketAddr,
    block_ws: Arc<AtomicBool>,
    upgraded: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl WsProxy {
    async fn start(upstream: SocketAddr) -> WsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let block_ws = Arc::new(AtomicBool::new(false));
        let upgraded: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (b, u) = (Arc::clone(&block_ws), Arc::clone(&upgraded));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (b, u) = (Arc::clone(&b), Arc::clone(&u));
                let task = tokio::spawn(async move {
                    let _ = Self::serve(client, upstream, b).await;
                });
                u.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        WsProxy {
            addr,
            block_ws,
            upgraded,
            accept,
        }
    }

    async fn serve(
        mut client: TcpStream,
        upstream: SocketAddr,
        block: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        // The first request's head decides what the connection is.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = client.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let upgrade = text.contains("upgrade: websocket");
        if upgrade && block.load(Ordering::SeqCst) {
            client
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await?;
            return Ok(());
        }
        let mut server = TcpStream::connect(upstream).await?;
        server.write_all(&head).await?;
        if upgrade {
            // Cut when blocked: checked while the connection lives.
            let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    _ = &mut copy => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if block.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        Ok(())
    }

    fn block_ws(&self, on: bool) {
        self.block_ws.store(on, Ordering::SeqCst);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for WsProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.upgraded.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let binary = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("chromedriver is not installed: apt-get install chromium chromium-driver (scripts/test.sh does it)");
        let port = common::redis_helpers::free_port();
        // A process group of its own: dropping the driver kills Chromium
        // too, even when the test fails before closing the session.
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    async fn browser(&self, profile: &Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            "--enable-precise-memory-info",
            "--js-flags=--expose-gc",
        ];
        let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        let mut chrome = json!({ "args": args });
        if Path::new("/usr/bin/chromium").exists() {
            chrome["binary"] = json!("/usr/bin/chromium");
        }
        caps.insert("goog:chromeOptions".into(), chrome);
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` (JS returning a value) returns something `ok` accepts.
async fn until(
    c: &Client,
    what: &str,
    limit: Duration,
    script: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {v} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    c.execute(
        &format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;"),
        vec![],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or("")
    .to_owned()
}

async fn rest(server: &Running, path: &str) -> Value {
    reqwest::get(server.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn exact(n: &Value) -> String {
    let n = n.as_u64().unwrap();
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `/` and `/assets/…`: types, validators, the security headers, and the
/// JSON 404 for an unknown file.
async fn serves_the_page_with_its_headers(server: &Running) {
    let http = reqwest::Client::new();
    let page = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["content-security-policy"], "default-src 'self'");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-cache");
    let body = page.text().await.unwrap();
    assert!(
        !body.contains("<script>") && !body.contains(" style="),
        "no inline script or style"
    );
    let js = http.get(server.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = js.headers()["etag"].to_str().unwrap().to_owned();
    let again = http
        .get(server.url("/assets/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304, "unchanged: not sent again");
    let css = http
        .get(server.url("/assets/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let missing = http
        .get(server.url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found", "{error}");
    let post = http.post(server.url("/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

/// Workflow counts of a file of in-order flat events, worked out here
/// (the first outcome decides; paused if the newest pause/resume is a pause).
#[derive(Debug, Default)]
struct Known {
    total: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    paused: u64,
}

fn counts_of(lines: &[String]) -> Known {
    use std::collections::HashMap;
    #[derive(Default)]
    struct Wf {
        created: bool,
        outcome: Option<String>,
        paused: bool,
    }
    let mut workflows: HashMap<String, Wf> = HashMap::new();
    for line in lines {
        let e: Value = serde_json::from_str(line).unwrap();
        let (Some(kind), Some(id)) = (e["type"].as_str(), e["workflow_id"].as_str()) else {
            continue;
        };
        let wf = workflows.entry(id.to_owned()).or_default();
        match kind {
            "workflow.created" => wf.created = true,
            "workflow.completed" | "workflow.failed" | "workflow.cancelled" => {
                wf.created = true;
                wf.outcome.get_or_insert_with(|| kind.to_owned());
            }
            "workflow.paused" => {
                wf.created = true;
                wf.paused = true;
            }
            "workflow.resumed" => {
                wf.created = true;
                wf.paused = false;
            }
            _ => {}
        }
    }
    let mut known = Known::default();
    for wf in workflows.values().filter(|w| w.created) {
        known.total += 1;
        match wf.outcome.as_deref() {
            Some("workflow.completed") => known.completed += 1,
            Some("workflow.failed") => known.failed += 1,
            Some(_) => known.cancelled += 1,
            None if wf.paused => known.paused += 1,
            None => {}
        }
    }
    known
}

/// Waits until every card equals the REST document.
async fn cards_match_rest(c: &Client, server: &Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let doc = rest(server, "/api/v1/monitoring/metrics/realtime").await["data"].clone();
        let o = &doc["overview"];
        let want = [
            ("#card-total", exact(&o["total_workflows"])),
            ("#card-running", exact(&o["running_workflows"])),
            ("#card-paused", exact(&o["paused_workflows"])),
            ("#card-completed", exact(&o["completed_workflows"])),
            ("#card-failed", exact(&o["failed_workflows"])),
            ("#card-cancelled", exact(&o["cancelled_workflows"])),
        ];
        let mut all = true;
        for (css, value) in &want {
            if text(c, css).await != *value {
                all = false;
            }
        }
        if all && o["total_workflows"].as_u64().unwrap_or(0) > 0 {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "the cards never matched REST: {o}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_follows_and_changes_everything_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let lines = common::flat_event_lines(3000, 11);
    let (first, rest_lines) = lines.split_at(2000);
    append(&events, first);
    let redis_url = common::redis_helpers::redis_url();
    let control_stream = format!("flowpulse-test:dashboard:{}:control", std::process::id());
    let db = dir.path().join("alerts.db");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
name = "dashboard-test"
data_dir = "{data}"
shutdown_deadline = "10s"

[stores.main]
url = "sqlite://{db}"

[sources.events]
type = "file"
path = "{events}"
follow = true
poll_interval = "100ms"

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "300ms"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

[[processors.alerts.rules]]
name = "Failures seen"
severity = "critical"
condition = {{ metric = "overview.failed_workflows", operator = ">", value = 0 }}
channels = ["dashboard"]
runbook_url = "https://runbooks.example.com/failures"

[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
token = "{TOKEN}"
store = "main"
dashboard = true
control = {{ url = "{redis_url}", stream = "{control_stream}" }}

[sinks.live]
type = "websocket"
inputs = ["metrics", "alerts", "events"]
address = "127.0.0.1:0"
token = "{TOKEN}"
events_interval = "100ms"
"#,
            data = dir.path().join("data").display(),
            db = db.display(),
            events = events.display(),
        ),
    )
    .unwrap();
    let server = start(dir.path(), &config);
    serves_the_page_with_its_headers(&server).await;
    let proxy = WsProxy::start(server.addr).await;
    let driver = Driver::start();
    let c = driver.browser(&dir.path().join("profile")).await;
    c.goto(&proxy.url("/")).await.unwrap();

    // ---- the cards, agents and types equal the REST document ----
    until(
        &c,
        "live",
        Duration::from_secs(20),
        "return window.flowpulseConnection && window.flowpulseConnection()",
        |v| v == "live",
    )
    .await;
    // The document holds the exact counts of the file once it is read…
    let known = counts_of(first);
    let expected = json!({
        "total_workflows": known.total,
        "completed_workflows": known.completed,
        "failed_workflows": known.failed,
        "cancelled_workflows": known.cancelled,
        "paused_workflows": known.paused,
        "running_workflows": known.total - known.completed - known.failed - known.cancelled - known.paused,
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o =
            rest(&server, "/api/v1/monitoring/metrics/realtime").await["data"]["overview"].clone();
        if expected
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &o[k] == v)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the counts never equalled the file's: {o} != {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and the cards show the document.
    let doc = cards_match_rest(&c, &server).await;
    assert_eq!(
        doc["overview"]["total_workflows"],
        expected["total_workflows"]
    );
    let agents: Vec<String> = doc["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_type"].as_str().unwrap().to_owned())
        .collect();
    until(
        &c,
        "agent tiles",
        Duration::from_secs(10),
        "return [...document.querySelectorAll('#agents .tile .name')].map(e => e.textContent)",
        |v| v.as_array().is_some_and(|a| a.len() == agents.len()),
    )
    .await;
    let shown: Vec<String> = serde_json::from_value(
        c.execute(
            "return [...document.querySelectorAll('#agents .tile .name')].map(e => e.textContent)",
            vec![],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(shown, agents, "one tile per agent, by name");
    let types: Vec<String> = doc["workflows_by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["workflow_type"].as_str().unwrap().to_owned())
        .collect();
    let shown: Vec<String> = serde_json::from_value(
        until(
            &c,
            "type rows",
            Duration::from_secs(10),
            "return [...document.querySelectorAll('#types tr th')].map(e => e.textContent)",
            |v| v.as_array().is_some_and(|a| a.len() == types.len()),
        )
        .await,
    )
    .unwrap();
    assert_eq!(shown, types);

    // ---- the alert: acknowledge through the button (token once), then resolve ----
    until(
        &c,
        "the alert",
        Duration::from_secs(20),
        "return [...document.querySelectorAll('#alerts .alert .title')].map(e => e.textContent)",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|t| t == "Failures seen"))
        },
    )
    .await;
    let id = c
        .execute(
            "return document.querySelector('#alerts .alert').dataset.key",
            vec![],
        )
        .await
        .unwrap();
    let id = id.as_str().unwrap().to_owned();
    c.find(Locator::Css("#alerts .alert .ack-comment"))
        .await
        .unwrap()
        .send_keys("on it")
        .await
        .unwrap();
    c.find(Locator::Css("#alerts .alert button.ack"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the token dialog",
        Duration::from_secs(5),
        "return document.getElementById('token-dialog').open",
        |v| v == true,
    )
    .await;
    c.find(Locator::Id("token-input"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("token-ok"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "acknowledged on the page",
        Duration::from_secs(10),
        &format!(
            "const e = document.querySelector('[data-key=\"{id}\"]'); return e && e.dataset.status"
        ),
        |v| v == "acknowledged",
    )
    .await;
    let stored = rest(&server, &format!("/api/v1/monitoring/alerts/{id}")).await;
    assert_eq!(stored["data"]["status"], "acknowledged", "{stored}");
    assert_eq!(stored["data"]["acknowledged_by"], "api:dashboard");
    let history = stored["data"]["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["to_status"] == "acknowledged" && h["comment"] == "on it"),
        "{stored}"
    );
    // Its history on demand.
    c.find(Locator::Css(&format!(
        "[data-key=\"{id}\"] button.show-history"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    until(
        &c,
        "history shown",
        Duration::from_secs(10),
        &format!("return document.querySelectorAll('[data-key=\"{id}\"] .history li').length"),
        |v| v.as_u64().is_some_and(|n| n >= 2),
    )
    .await;
    c.find(Locator::Css("#resolved-panel summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css(&format!("[data-key=\"{id}\"] button.resolve")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, "resolved on the page", Duration::from_secs(10),
        &format!("const e = document.querySelector('#resolved [data-key=\"{id}\"]'); return e && e.dataset.status"),
        |v| v == "resolved").await;
    let stored = rest(&server, &format!("/api/v1/monitoring/alerts/{id}")).await;
    assert_eq!(stored["data"]["status"], "resolved");
    assert_eq!(
        c.execute(
            "return document.getElementById('token-dialog').open",
            vec![]
        )
        .await
        .unwrap(),
        false,
        "asked once"
    );

    // ---- live events, newest first; paused, they stop changing ----
    c.find(Locator::Css("#events-panel summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    append(&events, &rest_lines[..200]);
    let wanted = serde_json::from_str::<Value>(&rest_lines[199]).unwrap()["workflow_id"]
        .as_str()
        .unwrap()
        .to_owned();
    until(
        &c,
        "appended events shown",
        Duration::from_secs(15),
        "return [...document.querySelectorAll('#events li')].map(e => e.textContent).join('\\n')",
        |v| v.as_str().is_some_and(|t| t.contains(&wanted)),
    )
    .await;
    c.find(Locator::Id("events-pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let frozen = text(&c, "#events").await;
    append(&events, &rest_lines[200..400]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        text(&c, "#events").await,
        frozen,
        "paused: the list does not change"
    );
    c.find(Locator::Id("events-pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // ---- the WebSocket cut: polling follows the events, then live again ----
    proxy.block_ws(true);
    until(
        &c,
        "polling",
        Duration::from_secs(20),
        "return window.flowpulseConnection()",
        |v| v == "polling",
    )
    .await;
    assert_eq!(
        text(&c, "#connection").await,
        "polling",
        "the state is shown"
    );
    append(&events, &rest_lines[400..]);
    cards_match_rest(&c, &server).await;
    proxy.block_ws(false);
    until(
        &c,
        "live again",
        Duration::from_secs(45),
        "return window.flowpulseConnection()",
        |v| v == "live",
    )
    .await;

    // ---- workflow control: the answer, and the entry in Redis ----
    c.find(Locator::Id("control-id"))
        .await
        .unwrap()
        .send_keys("wf-dashboard-1")
        .await
        .unwrap();
    c.find(Locator::Id("control-reason"))
        .await
        .unwrap()
        .send_keys("checking")
        .await
        .unwrap();
    c.find(Locator::Id("control-send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let answer = until(
        &c,
        "the control answer",
        Duration::from_secs(10),
        "return document.getElementById('control-answer').textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("queued")),
    )
    .await;
    let mut conn = common::redis_helpers::connection(&redis_url);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&control_stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&control_stream)
        .query(&mut conn)
        .unwrap();
    assert_eq!(entries.ids.len(), 1, "{answer}");
    let payload: String = entries.ids[0].get("payload").unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["key"], "wf-dashboard-1");
    assert_eq!(payload["msg"]["payload"]["action"], "pause");

    // ---- keyboard and names: every control reached by Tab, each named ----
    let controls = c.execute(
        "const all = [...document.querySelectorAll('button, input, select, summary, a[href]')].filter(e => e.checkVisibility({ visibilityProperty: true }) && !e.disabled);\
         all.forEach((e, i) => e.dataset.tabcheck = i);\
         const unnamed = all.filter(e => { const l = e.getAttribute('aria-label') || (e.labels && e.labels.length && e.labels[0].textContent.trim()) || e.textContent.trim(); return !l; }).map(e => e.outerHTML);\
         return [all.length, unnamed];", vec![]).await.unwrap();
    let total = controls[0].as_u64().unwrap();
    assert_eq!(
        controls[1],
        json!([]),
        "controls without an accessible name"
    );
    c.execute(
        "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);",
        vec![],
    )
    .await
    .unwrap();
    let mut reached = std::collections::BTreeSet::new();
    let mut sequence = Vec::new();
    for _ in 0..(total * 4 + 40) {
        c.active_element()
            .await
            .unwrap()
            .send_keys("\u{E004}")
            .await
            .unwrap();
        let k = c
            .execute(
                "return document.activeElement && document.activeElement.dataset.tabcheck",
                vec![],
            )
            .await
            .unwrap();
        sequence.push(k.clone());
        if let Some(k) = k.as_str() {
            reached.insert(k.to_owned());
        }
    }
    let missed = c
        .execute(
            "return [...document.querySelectorAll('[data-tabcheck]')].filter(e => !arguments[0].includes(e.dataset.tabcheck)).map(e => e.outerHTML.slice(0, 120))",
            vec![json!(reached.iter().collect::<Vec<_>>())],
        )
        .await
        .unwrap();
    assert_eq!(
        reached.len() as u64,
        total,
        "every control is reachable with Tab; missed: {missed}; focus went {sequence:?}"
    );

    // ---- the charts' point store against a sorted-map oracle ----
    let checked = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
            import('/assets/charts.js').then(({ Series }) => {
              let seed = 7;
              const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
              for (let round = 0; round < 200; round++) {
                const s = new Series(2, 1 + rnd(4));
                const oracle = new Map();
                for (let k = 0; k < 60; k++) {
                  const t = rnd(50);
                  if (rnd(10) === 0) {
                    const cut = rnd(50);
                    s.dropBefore(cut);
                    for (const key of [...oracle.keys()]) if (key < cut) oracle.delete(key);
                  } else {
                    s.upsert(t, [t * 2, k]);
                    oracle.set(t, [t * 2, k]);
                  }
                }
                const want = [...oracle.entries()].sort((a, b) => a[0] - b[0]);
                const got = [];
                for (let i = 0; i < s.len; i++) got.push([s.tAt(i), [s.value(i, 0), s.value(i, 1)]]);
                if (JSON.stringify(got) !== JSON.stringify(want)) {
                  done('round ' + round + ': ' + JSON.stringify(got) + ' != ' + JSON.stringify(want));
                  return;
                }
              }
              done('ok');
            });"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        checked, "ok",
        "chart points: any order, replacements and cuts"
    );

    // ---- no request outside the origin, no error from the page's scripts ----
    let outside = c.execute("return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin) && !n.startsWith(location.origin.replace('http', 'ws')))", vec![]).await.unwrap();
    assert_eq!(outside, json!([]), "requests outside the origin");
    let errors = c
        .execute("return window.flowpulseErrors", vec![])
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "errors from the page's scripts");

    // ---- a screenshot of each theme ----
    let out = artifacts();
    for theme in ["light", "dark"] {
        for _ in 0..3 {
            let current = c
                .execute(
                    "return document.documentElement.dataset.theme || 'system'",
                    vec![],
                )
                .await
                .unwrap();
            if current == theme {
                break;
            }
            c.find(Locator::Id("theme"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
        c.execute(
            "window.scrollTo(0, 0); document.activeElement && document.activeElement.blur();",
            vec![],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = c.screenshot().await.unwrap();
        assert!(png.len() > 10_000, "a real screenshot");
        std::fs::write(out.join(format!("dashboard-{theme}.png")), png).unwrap();
    }
    c.close().await.unwrap();
    drop(proxy);
    assert!(server.stop().success());
}

/// A demo → aggregate pipeline with `sinks` started, and a browser on its
/// page.
async fn demo_page(dir: &Path, sinks: &str) -> (Running, Driver, Client) {
    let config = dir.join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"[pipeline]
data_dir = "{data}"

[sources.demo]
type = "demo"
rate = 50

[processors.metrics]
type = "aggregate"
inputs = ["demo"]
interval = "300ms"
{sinks}"#,
            data = dir.join("data").display(),
        ),
    )
    .unwrap();
    let server = start(dir, &config);
    let driver = Driver::start();
    let c = driver.browser(&dir.join("profile")).await;
    c.goto(&server.url("/")).await.unwrap();
    (server, driver, c)
}

/// A server that keeps no alerts (no `store`): the page says so instead of
/// "No open alerts", and does not ask for them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_alert_store_the_page_says_so_and_stops_asking() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _driver, c) = demo_page(
        dir.path(),
        &format!(
            r#"
[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
token = "{TOKEN}"
dashboard = true

[sinks.live]
type = "websocket"
inputs = ["metrics"]
address = "127.0.0.1:0"
token = "{TOKEN}"
"#
        ),
    )
    .await;
    until(
        &c,
        "the empty alerts panel",
        Duration::from_secs(20),
        "const e = document.getElementById('alerts-empty'); return e && !e.hidden ? e.textContent : null;",
        |v| v.as_str().is_some_and(|t| t.contains("No alert store")),
    )
    .await;
    // Documents keep coming; the alerts are not asked for again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = c
        .execute(
            "return performance.getEntriesByType('resource').filter(e => e.name.includes('/alerts')).length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(asked, json!(1));
    c.close().await.unwrap();
    assert!(server.stop().success());
}

/// Reads that need the token (`auth_reads`): the page asks for it; cancelled,
/// the banner offers to enter it, and once entered the page fills and goes
/// live on the WebSocket, at the `path` the server's OpenAPI document lists
/// (not the default one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reads_behind_the_token_a_cancelled_dialog_leaves_a_way_in() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _driver, c) = demo_page(
        dir.path(),
        &format!(
            r#"
[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
token = "{TOKEN}"
auth_reads = true
dashboard = true

[sinks.live]
type = "websocket"
inputs = ["metrics"]
address = "127.0.0.1:0"
path = "/ws/live"
token = "{TOKEN}"
auth_reads = true
"#
        ),
    )
    .await;
    let dialog_open = "return document.getElementById('token-dialog').open";
    until(
        &c,
        "the token dialog",
        Duration::from_secs(20),
        dialog_open,
        |v| v == true,
    )
    .await;
    c.find(Locator::Id("token-cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the way back in",
        Duration::from_secs(20),
        "return !document.getElementById('token-enter').hidden",
        |v| v == true,
    )
    .await;
    assert_eq!(
        text(&c, "#card-total").await,
        "–",
        "nothing read without it"
    );
    c.find(Locator::Id("token-enter"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the token dialog again",
        Duration::from_secs(5),
        dialog_open,
        |v| v == true,
    )
    .await;
    c.find(Locator::Id("token-input"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("token-ok"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the cards filled",
        Duration::from_secs(20),
        "return document.getElementById('card-total').textContent",
        |v| v.as_str().is_some_and(|t| t != "–"),
    )
    .await;
    assert_eq!(
        c.execute(
            "return document.getElementById('token-enter').hidden",
            vec![]
        )
        .await
        .unwrap(),
        true
    );
    until(
        &c,
        "live on /ws/live",
        Duration::from_secs(20),
        "return window.flowpulseConnection()",
        |v| v == "live",
    )
    .await;
    c.close().await.unwrap();
    assert!(server.stop().success());
}
