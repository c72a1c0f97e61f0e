//! Notification sinks end to end: the real binary, real HTTP receivers and
//! a real SMTP server on loopback, started by each test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::http_helpers::{start, write_config, Running};
use common::receiver::{reserve_port, Answer, Hit, Receiver, SmtpServer};
use flowpulse_core::alert::{notice_id, AlertStatus};
use hmac::{KeyInit as _, Mac as _};
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi0yNC1ieXRlcw==";
const TOKEN: &str = "notify-test-token-0123456789";

/// Rules on `overview.total_workflows`, which only grows while the demo
/// source runs: `(name, severity, threshold, channels)`.
fn rules(rules: &[(&str, &str, u32, &str)]) -> String {
    rules
        .iter()
        .map(|(name, severity, threshold, channels)| {
            format!(
                "[[processors.alerts.rules]]\nname = \"{name}\"\nseverity = \"{severity}\"\n\
                 condition = {{ metric = \"overview.total_workflows\", operator = \">\", value = {threshold} }}\n\
                 channels = [{channels}]\n\n"
            )
        })
        .collect()
}

/// Verifies a Standard Webhooks signature header independently of the
/// sink's code: one `v1,` signature per secret, any of which matches.
fn verifies(hit: &Hit, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let id = hit.header("webhook-id").unwrap();
    let ts = hit.header("webhook-timestamp").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hit.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    hit.header("webhook-signature")
        .unwrap_or("")
        .split(' ')
        .any(|s| s == expected)
}

fn rule_of(hit: &Hit) -> String {
    hit.json()["alerts"][0]["rule_name"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn status(server: &Running) -> Value {
    reqwest::get(server.url("/api/v1/monitoring/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the component's extra `field` in `/status` satisfies `ok`.
async fn wait_status(server: &Running, component: &str, field: &str, ok: impl Fn(i64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(server).await;
        let value = s["components"][component][field].as_i64();
        if value.is_some_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{component}.{field} never got there: {}",
            s["components"][component]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn webhook_retries_500_timeout_and_429_then_delivers_signed_with_one_id() {
    // Each notice: 500, then no answer (the 500 ms timeout), then 429 with
    // Retry-After: 2, then 200. A rule whose notices the receiver refuses
    // (400) shows a notice failing at once.
    let receiver = Receiver::start(|hit| {
        if rule_of(hit).starts_with("refused") {
            return Answer::Status(400);
        }
        match hit.attempt {
            1 => Answer::Status(500),
            2 => Answer::Hang,
            3 => Answer::RetryAfter(429, 2),
            _ => Answer::Status(200),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

{rules}
[sinks.hook]
type = "webhook"
inputs = ["alerts"]
url = "{url}"
secret = ["{SECRET}", "{OLD_SECRET}"]
headers = {{ "X-Team" = "ops" }}
timeout = "500ms"
retry_initial = "100ms"
retry_max = "5s"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
        rules = rules(&[
            ("accepted in the end", "warning", 5, "\"hook\""),
            ("refused by the receiver", "critical", 5, "\"hook\""),
        ]),
        url = receiver.url("/hooks/flowpulse?key=s3cret"),
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let hits = receiver
        .wait_for(Duration::from_secs(30), |hits| {
            hits.iter()
                .any(|h| h.answered == 200 && rule_of(h) == "accepted in the end")
                && hits.iter().any(|h| h.answered == 400)
        })
        .await;
    // A refused notice is not tried again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_after = receiver.hits();
    assert_eq!(
        hits_after.iter().filter(|h| h.answered == 400).count(),
        1,
        "a 400 fails the notice at once"
    );
    wait_status(&server, "hook", "deliveries_failed", |n| n == 1).await;
    wait_status(&server, "hook", "notices_delivered", |n| n == 1).await;
    wait_status(&server, "hook", "outbox_pending", |n| n == 0).await;
    let shown = status(&server).await["components"]["hook"].to_string();
    assert!(
        shown.contains("HTTP 400"),
        "the refusal is in /status: {shown}"
    );
    assert!(
        !shown.contains("s3cret") && !shown.contains("/hooks/"),
        "{shown}"
    );
    let log = server.log_lines().join("\n");
    assert!(
        log.contains("HTTP 400"),
        "the refusal is logged with its status"
    );
    // No secret in the log: not the URL's path or query, not the secret,
    // not the header value.
    for secret in ["s3cret", "/hooks/flowpulse", "MfKQ9r8G", "X-Team\":\"ops"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    drop(server);

    let accepted: Vec<&Hit> = hits
        .iter()
        .filter(|h| rule_of(h) == "accepted in the end")
        .collect();
    assert_eq!(
        accepted.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 0, 429, 200],
        "one attempt per answer, until the 200"
    );
    let id = accepted[0].header("webhook-id").unwrap();
    for hit in &accepted {
        assert_eq!(
            hit.header("webhook-id"),
            Some(id),
            "the same id on every attempt"
        );
        assert_eq!(hit.json()["notice_id"], id, "the id is the notice id");
        assert_eq!(hit.json()["version"], "1");
        assert_eq!(hit.json()["type"], "alert:triggered");
        assert_eq!(hit.header("x-team"), Some("ops"));
        assert!(verifies(hit, SECRET), "signed with the current secret");
        assert!(
            verifies(hit, OLD_SECRET),
            "and with the one being rotated out"
        );
        let ts: i64 = hit.header("webhook-timestamp").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() < 60, "the attempt's own time: {ts}");
    }
    let waited = accepted[3].at - accepted[2].at;
    assert!(
        waited >= Duration::from_secs(2),
        "the retry came {waited:?} after a Retry-After of 2 s"
    );
}

#[tokio::test]
async fn notices_pending_at_a_sigkill_are_delivered_after_the_restart_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let port = reserve_port();
    let db = dir.path().join("alerts.db");
    let sinks = format!(
        r#"[stores.main]
url = "sqlite://{db}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.hook]
type = "webhook"
inputs = ["alerts"]
url = "http://{port}/hook"
send_resolved = false
retry_initial = "100ms"
retry_max = "500ms"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
store = "main"
"#,
        db = db.display(),
        rules = rules(&[
            ("over 10", "warning", 10, "\"hook\""),
            ("over 20", "warning", 20, "\"hook\""),
            ("over 30", "critical", 30, "\"hook\""),
        ]),
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    // The receiver is down: every notice waits in the outbox.
    let server = start(dir.path(), &config);
    wait_status(&server, "hook", "outbox_pending", |n| n >= 3).await;
    let alerts: Value = reqwest::get(server.url("/api/v1/monitoring/alerts?limit=100"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pending: BTreeSet<String> = alerts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| notice_id(a["id"].as_str().unwrap(), AlertStatus::Triggered, 0))
        .collect();
    assert!(pending.len() >= 3, "{alerts}");
    drop(server); // SIGKILL

    // Back up: the first attempt of each notice is taken but answered 500
    // (the answer lost, as far as Flowpulse can tell), then 200.
    let receiver = Receiver::start_on(port, |hit| {
        if hit.attempt == 1 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let server = start(dir.path(), &config);
    let hits = receiver
        .wait_for(Duration::from_secs(30), |hits| {
            pending.iter().all(|id| {
                hits.iter()
                    .any(|h| h.answered == 200 && h.header("webhook-id") == Some(id))
            })
        })
        .await;
    let log = server.log_lines().join("\n");
    assert!(
        log.contains("resuming notices not delivered before the last stop"),
        "the outbox's pending rows were resumed"
    );
    drop(server);
    // Every repeat came with its notice's id, and no id was used for two
    // different notices.
    let mut by_id: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for hit in &hits {
        let id = hit.header("webhook-id").unwrap();
        let body = hit.json();
        assert_eq!(body["notice_id"], id);
        by_id
            .entry(id)
            .or_default()
            .insert(body["alerts"][0]["id"].as_str().unwrap().to_owned());
    }
    assert!(by_id.values().all(|alerts| alerts.len() == 1), "{by_id:?}");
}

#[tokio::test]
async fn a_receiver_down_for_many_retry_periods_gets_everything_in_order_and_old_notices_fail() {
    let dir = tempfile::tempdir().unwrap();
    let port = reserve_port();
    let dead = reserve_port();
    let db = dir.path().join("alerts.db");
    let watchdogs = format!(
            "{}[[processors.alerts.rules]]\nname = \"outbox backing up\"\nseverity = \"warning\"\n\
             condition = {{ metric = \"self.outbox_pending\", operator = \">\", value = 0 }}\n\n\
             [[processors.alerts.rules]]\nname = \"deliveries failing\"\nseverity = \"critical\"\n\
             condition = {{ metric = \"self.failed_deliveries\", operator = \">\", value = 0 }}\n\n",
            rules(&[("over 10", "warning", 10, "\"hook\", \"dead\"")])
        );
    let sinks = format!(
        r#"[stores.main]
url = "sqlite://{db}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.hook]
type = "webhook"
inputs = ["alerts"]
url = "http://{port}/hook"
send_acknowledged = true
retry_initial = "200ms"
retry_max = "1s"

[sinks.dead]
type = "webhook"
inputs = ["alerts"]
url = "http://{dead}/hook"
retry_initial = "200ms"
retry_max = "1s"
max_age = "2s"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
store = "main"
token = "{TOKEN}"
"#,
        db = db.display(),
        rules = watchdogs,
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    // The alert fires; a person acknowledges, then resolves it: three
    // notices about one alert, all while the receiver is down.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let alerts: Value = http
            .get(server.url("/api/v1/monitoring/alerts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let first = alerts["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule_name"] == "over 10")
            .and_then(|a| a["id"].as_str());
        if let Some(id) = first {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no alert stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for action in ["acknowledge", "resolve"] {
        let answer = http
            .post(server.url(&format!("/api/v1/monitoring/alerts/{id}/{action}")))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{action}");
        wait_status(&server, "hook", "outbox_pending", |n| {
            n >= if action == "resolve" { 3 } else { 2 }
        })
        .await;
    }
    // Down for several retry periods (retry_max = 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = status(&server).await;
    assert!(
        s["components"]["hook"]["delivery_retries"]
            .as_i64()
            .unwrap()
            >= 3,
        "{s}"
    );
    // The dead receiver's notices are older than its max_age by now.
    wait_status(&server, "dead", "deliveries_failed", |n| n >= 1).await;
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("flowpulse_component_deliveries_failed_total")
                && l.contains("component=\"dead\"")
        })
        .unwrap_or_else(|| panic!("no failed deliveries in /metrics:\n{metrics}"));
    assert!(!failed_line.ends_with(" 0"), "{failed_line}");

    // Rules watch the outbox and the failures.
    let alerts: Value = http
        .get(server.url("/api/v1/monitoring/alerts?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fired: BTreeSet<&str> = alerts["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["rule_name"].as_str())
        .collect();
    assert!(
        fired.contains("outbox backing up") && fired.contains("deliveries failing"),
        "{fired:?}"
    );

    let receiver = Receiver::start_on(port, |_| Answer::Status(200)).await;
    let statuses = |hits: &[Hit]| -> Vec<String> {
        hits.iter()
            .filter(|h| h.json()["alerts"][0]["id"] == id.as_str())
            .map(|h| h.json()["alerts"][0]["status"].as_str().unwrap().to_owned())
            .collect()
    };
    let hits = receiver
        .wait_for(Duration::from_secs(30), |hits| statuses(hits).len() >= 3)
        .await;
    assert_eq!(
        statuses(&hits),
        ["triggered", "acknowledged", "resolved"],
        "one alert's notices in order"
    );
    let s = status(&server).await;
    assert_eq!(s["components"]["hook"]["deliveries_failed"], 0, "{s}");
    drop(server);
}

#[tokio::test]
async fn notifications_flow_while_the_alert_database_is_cut() {
    let base = common::proxy::database_url();
    let proxy = common::proxy::Proxy::start(common::proxy::database_addr()).await;
    let database = format!("flowpulse_test_notify_cut_{}", std::process::id());
    let receiver = Receiver::start(|_| Answer::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"[stores.main]
url = "postgres://postgres@{proxy}/{database}"
connect_timeout = "1s"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.hook]
type = "webhook"
inputs = ["alerts"]
url = "{url}"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
        proxy = proxy.addr,
        rules = rules(&[
            ("first", "warning", 10, "\"hook\""),
            ("during the cut 1", "warning", 150, "\"hook\""),
            ("during the cut 2", "warning", 200, "\"hook\""),
        ]),
        url = receiver.url("/hook"),
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    receiver
        .wait_for(Duration::from_secs(30), |hits| {
            hits.iter().any(|h| rule_of(h) == "first")
        })
        .await;
    proxy.down();
    let cut_at = Instant::now();
    let hits = receiver
        .wait_for(Duration::from_secs(60), |hits| {
            hits.iter()
                .filter(|h| rule_of(h).starts_with("during the cut"))
                .count()
                == 2
        })
        .await;
    let health: Value = reqwest::get(server.url("/api/v1/monitoring/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["healthy"], false,
        "the database is still cut: {health}"
    );
    assert!(hits.iter().all(|h| h.at < cut_at || h.answered == 200));
    proxy.up();
    drop(server);
    let _ = std::process::Command::new("psql")
        .arg(&base)
        .arg("-qc")
        .arg(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .output();
}

/// Undoes quoted-printable soft breaks and escapes (what lettre uses for
/// long ASCII lines).
fn unquote(text: &str) -> String {
    let joined = text.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_email_reaches_an_smtp_server_with_subject_and_both_parts_after_a_4xx() {
    // The first DATA gets 451: a 4xx is retried.
    let smtp = SmtpServer::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[[processors.alerts.rules]]
name = "too many workflows"
severity = "critical"
condition = {{ metric = "overview.total_workflows", operator = ">", value = 5 }}
message = "{{{{value}}}} workflows <over> {{{{threshold}}}}"
channels = ["mail"]

[sinks.mail]
type = "email"
inputs = ["alerts"]
smtp_url = "smtp://{addr}"
from = "Flowpulse <flowpulse@example.com>"
to = ["oncall@example.com", "gone@example.com", "lead@example.com"]
subject_prefix = "[test] "
retry_initial = "100ms"
retry_max = "500ms"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
        addr = smtp.addr,
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    // One SMTP session per recipient (a refused address keeps no one else
    // from the email).
    let mails = loop {
        let mails = smtp.mails.lock().unwrap().clone();
        if mails.len() >= 2 {
            break mails;
        }
        assert!(
            Instant::now() < deadline,
            "the emails did not arrive: {mails:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The refusal is logged once its session ends, which may be after the
    // other recipients' mail has arrived.
    let refusal_logged =
        |log: &str| log.contains("a recipient was refused") && log.contains("gone@example.com");
    while !refusal_logged(&server.log_lines().join("\n")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log_lines().join("\n");
    drop(server);
    assert!(refusal_logged(&log), "the refused recipient is logged");
    assert!(
        !log.contains("not delivered, given up"),
        "the others got it"
    );
    assert_eq!(
        *smtp.refused.lock().unwrap(),
        1,
        "the 451 was answered once"
    );
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["<lead@example.com>", "<oncall@example.com>"]);
    let mail = &mails[0];
    assert_eq!(mail.from, "<flowpulse@example.com>");
    assert!(
        mail.data
            .contains("To: oncall@example.com, gone@example.com, lead@example.com"),
        "both are named in the header: {}",
        mail.data
    );
    let data = unquote(&mail.data.replace("\r\n ", " "));
    let subject = data
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .expect("a subject");
    assert!(
        subject.starts_with("[test] [CRITICAL] too many workflows: ")
            && subject.contains("<over> 5"),
        "{subject}"
    );
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("text/plain"), "{data}");
    assert!(data.contains("text/html"), "{data}");
    assert!(
        data.contains("Value: overview.total_workflows = "),
        "{data}"
    );
    assert!(
        data.contains("&lt;over&gt; 5"),
        "the HTML part is escaped: {data}"
    );
}

#[tokio::test]
async fn credentials_the_smtp_server_offers_no_login_for_fail_the_notice_at_once() {
    // The test server offers no AUTH, so lettre cannot log in: a setting no
    // retry changes. The first retry is an hour away, so a notice given up
    // within the test's deadline was given up without one.
    let smtp = SmtpServer::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[[processors.alerts.rules]]
name = "too many workflows"
severity = "critical"
condition = {{ metric = "overview.total_workflows", operator = ">", value = 5 }}
channels = ["mail"]

[sinks.mail]
type = "email"
inputs = ["alerts"]
smtp_url = "smtp://alerts:Sm7pPassw0rd@{addr}"
from = "flowpulse@example.com"
to = ["oncall@example.com"]
retry_initial = "1h"
retry_max = "1h"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
        addr = smtp.addr,
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let given_up = |log: &str| log.contains("notice not delivered, given up");
    while !given_up(&server.log_lines().join("\n")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log_lines().join("\n");
    drop(server);
    assert!(given_up(&log), "the notice is given up at once: {log}");
    assert!(
        log.contains("No compatible authentication mechanism"),
        "the reason is logged: {log}"
    );
    assert!(!log.contains("retrying"), "nothing is retried: {log}");
    assert!(!log.contains("Sm7pPassw0rd"), "the password is not logged");
    assert!(smtp.mails.lock().unwrap().is_empty());
}

#[tokio::test]
async fn channels_and_min_severity_route_and_a_burst_reaches_slack_as_at_most_two_messages() {
    let slack = Receiver::start(|_| Answer::Status(200)).await;
    let hook = Receiver::start(|_| Answer::Status(200)).await;
    let pager = Receiver::start(|_| Answer::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut list: Vec<(String, &str, u32, &str)> = (1..=10)
        .map(|k| (format!("burst {k}"), "info", 5, "\"ops_slack\""))
        .collect();
    list.push(("for the hook".into(), "warning", 5, "\"ops_hook\""));
    list.push(("page someone".into(), "critical", 5, "\"dashboard\""));
    let list: Vec<(&str, &str, u32, &str)> = list
        .iter()
        .map(|(n, s, t, c)| (n.as_str(), *s, *t, *c))
        .collect();
    let sinks = format!(
        r#"[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

{rules}
[sinks.ops_slack]
type = "slack"
inputs = ["alerts"]
webhook_url = "{slack}"
dashboard_url = "http://127.0.0.1:8080/"

[sinks.ops_hook]
type = "webhook"
inputs = ["alerts"]
url = "{hook}"

[sinks.pager]
type = "webhook"
inputs = ["alerts"]
url = "{pager}"
all_alerts = true
min_severity = "critical"

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
"#,
        rules = rules(&list),
        slack = slack.url("/services/T000/B000/XXXX"),
        hook = hook.url("/hook"),
        pager = pager.url("/pager"),
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let listed = |hits: &[Hit]| -> BTreeSet<String> {
        hits.iter()
            .flat_map(|h| h.json()["blocks"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| {
                let text = b["text"]["text"].as_str()?;
                let start = text.find('*')? + 1;
                let end = start + text[start..].find('*')?;
                Some(text[start..end].to_owned())
            })
            .collect()
    };
    let hits = slack
        .wait_for(Duration::from_secs(30), |hits| listed(hits).len() >= 10)
        .await;
    hook.wait_for(Duration::from_secs(10), |hits| !hits.is_empty())
        .await;
    pager
        .wait_for(Duration::from_secs(10), |hits| !hits.is_empty())
        .await;
    // Whatever else was on its way arrives now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(server);
    let expected: BTreeSet<String> = (1..=10).map(|k| format!("burst {k}")).collect();
    assert_eq!(
        listed(&slack.hits()),
        expected,
        "slack: its channel only, all ten"
    );
    assert!(hits.len() <= 2, "ten notices in {} messages", hits.len());
    assert!(slack.hits().len() <= 2);
    assert_eq!(
        hook.hits().iter().map(rule_of).collect::<Vec<_>>(),
        ["for the hook"],
        "the webhook: its channel only"
    );
    assert_eq!(
        pager.hits().iter().map(rule_of).collect::<Vec<_>>(),
        ["page someone"],
        "all_alerts with min_severity = critical: the critical one only"
    );
}

#[tokio::test]
async fn a_muted_rule_and_send_resolved_false_hold_back_what_they_should() {
    let hook = Receiver::start(|_| Answer::Status(200)).await;
    let quiet = Receiver::start(|_| Answer::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("alerts.db");
    let sinks = format!(
        r#"[stores.main]
url = "sqlite://{db}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

{rules}
[sinks.alert_db]
type = "alert_store"
inputs = ["alerts"]
store = "main"

[sinks.hook]
type = "webhook"
inputs = ["alerts"]
url = "{hook}"

[sinks.quiet]
type = "webhook"
inputs = ["alerts"]
url = "{quiet}"
send_resolved = false

[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
store = "main"
token = "{TOKEN}"
"#,
        db = db.display(),
        rules = rules(&[
            ("resolve me", "warning", 5, "\"hook\", \"quiet\""),
            // Fires a few seconds in, after the test has muted it.
            ("muted one", "critical", 150, "\"hook\", \"quiet\""),
        ]),
        hook = hook.url("/hook"),
        quiet = quiet.url("/quiet"),
    );
    let config = write_config(dir.path(), "", "200ms", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    // Mute "muted one" (a config rule: its id is read from the API).
    let deadline = Instant::now() + Duration::from_secs(20);
    let muted_id = loop {
        let answer = http
            .get(server.url("/api/v1/monitoring/rules"))
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            let rules: Value = answer.json().await.unwrap();
            if let Some(id) = rules["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == "muted one")
                .and_then(|r| r["id"].as_str())
            {
                break id.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the config's rules never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let muted = http
        .post(server.url(&format!("/api/v1/monitoring/rules/{muted_id}/mute")))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"until": "2100-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(muted.status(), 200);

    // "resolve me" fires and reaches both; a person resolves it.
    let fired = |hits: &[Hit], rule: &str, status: &str| {
        hits.iter().any(|h| {
            let a = &h.json()["alerts"][0];
            a["rule_name"] == rule && a["status"] == status
        })
    };
    hook.wait_for(Duration::from_secs(30), |h| {
        fired(h, "resolve me", "triggered")
    })
    .await;
    quiet
        .wait_for(Duration::from_secs(10), |h| {
            fired(h, "resolve me", "triggered")
        })
        .await;
    let id = hook.hits()[0].json()["alerts"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resolved = http
        .post(server.url(&format!("/api/v1/monitoring/alerts/{id}/resolve")))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), 200);
    hook.wait_for(Duration::from_secs(15), |h| {
        fired(h, "resolve me", "resolved")
    })
    .await;

    // "muted one" fires, muted: stored and shown, sent to no one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts: Value = http
            .get(server.url("/api/v1/monitoring/alerts?limit=100"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = alerts["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule_name"] == "muted one")
            .cloned();
        if let Some(alert) = found {
            assert_eq!(alert["muted"], true, "{alert}");
            break;
        }
        assert!(Instant::now() < deadline, "the muted rule never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_status(&server, "hook", "notices_skipped", |n| n >= 1).await;
    wait_status(&server, "quiet", "notices_skipped", |n| n >= 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(server);
    for (name, receiver) in [("hook", &hook), ("quiet", &quiet)] {
        assert!(
            !receiver.hits().iter().any(|h| rule_of(h) == "muted one"),
            "{name} got a muted rule's notice"
        );
    }
    assert!(
        !fired(&quiet.hits(), "resolve me", "resolved"),
        "send_resolved = false holds the resolved notice back"
    );
}
