//! The `rest` sink over real HTTP on loopback (CONTRACT §4, §6): every
//! route's answers against its own OpenAPI operation, auth, control queued
//! in the real Redis, the token file, Prometheus text, config conflicts.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::http_helpers::{
    poll_json, rest_and_websocket, start, start_listening, write_config, Running,
};
use common::redis_helpers::{connection, prefix, redis_url};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Checks answers against the server's own OpenAPI document.
struct Spec(Value);

impl Spec {
    async fn fetch(server: &Running) -> Spec {
        let response = reqwest::get(server.url("/api/v1/openapi.json"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Spec(response.json().await.unwrap())
    }

    fn routes(&self) -> BTreeSet<String> {
        let mut routes = BTreeSet::new();
        for (path, item) in self.0["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                routes.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
        routes
    }

    /// Asserts that `status` is listed for the operation and that `body`
    /// matches its schema.
    fn check(&self, method: &str, path: &str, status: u16, body: &Value) {
        let errors = self.errors(method, path, status, body);
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:?}\n{body}"
        );
    }

    /// What is wrong with `body` as the answer `status` of an operation.
    fn errors(&self, method: &str, path: &str, status: u16, body: &Value) -> Vec<String> {
        let operation = &self.0["paths"][path][method];
        assert!(operation.is_object(), "no operation {method} {path}");
        let answer = &operation["responses"][status.to_string()];
        assert!(
            answer.is_object(),
            "{method} {path} answered {status}, which its operation does not list"
        );
        let Some(schema) = answer["content"]["application/json"]["schema"].as_object() else {
            return Vec::new();
        };
        // The components travel with the schema so that its $refs resolve.
        let mut root = json!({"components": self.0["components"].clone()});
        for (k, v) in schema {
            root[k] = v.clone();
        }
        let validator = jsonschema::validator_for(&root).unwrap();
        validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }
}

async fn call(
    server: &Running,
    spec: &Spec,
    request: reqwest::RequestBuilder,
    method: &str,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let _ = server;
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body: Value = if path == "/metrics" && status == 200 {
        Value::String(text)
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status} {path} not JSON ({e}): {text}"))
    };
    spec.check(method, path, status, &body);
    (status, headers, body)
}

/// `redis_stream` (with `source`'s settings) → `aggregate` → `rest`: the
/// source must take its group's lease before the pipeline starts.
fn leased_pipeline(dir: &std::path::Path, source: &str) -> std::path::PathBuf {
    let config = dir.join("pipeline.toml");
    let text = format!(
        "[pipeline]\ndata_dir = \"{}\"\n\n[sources.events]\ntype = \"redis_stream\"\n{source}\n\n\
         [processors.metrics]\ntype = \"aggregate\"\ninputs = [\"events\"]\n\n\
         [sinks.api]\ntype = \"rest\"\ninputs = [\"metrics\"]\naddress = \"127.0.0.1:0\"\n",
        dir.join("data").display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// A client that gives up after 5 s: a server that accepted and never
/// answered would otherwise hang the test.
fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn health_answers_while_a_source_waits_for_its_redis_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the source (the reader of a stateful
    // processor) keeps trying to take its lease, and the pipeline waits.
    let config = leased_pipeline(dir.path(), "url = \"redis://127.0.0.1:1\"");
    let server = start_listening(dir.path(), &config);
    let http = probe_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = http
            .get(server.url("/api/v1/monitoring/health"))
            .send()
            .await
            .expect("an answer while the pipeline waits");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        let check = body["checks"]["events"].as_str().unwrap_or("");
        if check.contains("cannot reach") {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["healthy"], false);
            assert_eq!(body["aggregator_ready"], false);
            break;
        }
        assert!(Instant::now() < deadline, "the outage never showed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("pipeline started")),
        "the pipeline started without its source"
    );
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_standby_instance_waiting_for_the_lease_is_healthy_and_initializing() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let stream = format!("{}:events", prefix(&url, "standby"));
    // Another live instance (consumer "a") holds the group's lease for a minute.
    let lease = format!("flowpulse:lease:flowpulse:{stream}");
    let mut redis = connection(&url);
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("0123:a")
        .arg("PX")
        .arg(60_000)
        .query(&mut redis)
        .unwrap();
    let config = leased_pipeline(
        dir.path(),
        &format!("url = \"{url}\"\nstream = \"{stream}\"\nconsumer = \"b\""),
    );
    let server = start_listening(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .log_lines()
        .iter()
        .any(|l| l.contains("holds this group's lease"))
    {
        assert!(Instant::now() < deadline, "never waited for the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = probe_client();
    let health = http
        .get(server.url("/api/v1/monitoring/health"))
        .send()
        .await
        .expect("an answer while the instance waits");
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(
        (
            body["healthy"].as_bool(),
            body["aggregator_ready"].as_bool()
        ),
        (Some(true), Some(false)),
        "{body}"
    );
    let status: Value = http
        .get(server.url("/api/v1/monitoring/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "initializing", "{status}");
    assert!(server.stop().success());
    let _: () = redis::cmd("DEL").arg(&lease).query(&mut redis).unwrap();
}

#[tokio::test]
async fn the_openapi_document_describes_the_dashboard_as_pages_and_each_operation_once() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = rest_and_websocket("").replace("[sinks.live]", "dashboard = true\n\n[sinks.live]");
    let config = write_config(dir.path(), "", "1s", &sinks);
    let server = start(dir.path(), &config);
    let spec = Spec::fetch(&server).await;
    let responses = |path: &str| -> BTreeSet<String> {
        spec.0["paths"][path]["get"]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("no GET {path}"))
            .keys()
            .cloned()
            .collect()
    };
    for path in ["/", "/assets/{file}"] {
        let statuses = responses(path);
        assert!(
            statuses.contains("200") && statuses.contains("304"),
            "{path}: {statuses:?}"
        );
        assert!(
            !statuses.contains("101"),
            "{path} shown as a WebSocket: {statuses:?}"
        );
    }
    assert!(responses("/assets/{file}").contains("404"));
    assert!(responses("/ws/monitoring").contains("101"));
    // Operation ids are unique (OpenAPI requires it).
    let mut ids = Vec::new();
    for item in spec.0["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            ids.extend(operation["operationId"].as_str().map(str::to_owned));
        }
    }
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    // And the page is there.
    let page = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(server.stop().success());
}

#[tokio::test]
async fn every_route_answers_as_its_openapi_operation_says() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let stream = format!("{}:control", prefix(&url, "routes"));
    let sinks = rest_and_websocket(&format!("token = \"{TOKEN}\"")).replace(
        "[sinks.live]",
        &format!("control = {{ url = \"{url}\", stream = \"{stream}\" }}\n\n[sinks.live]"),
    );
    let config = write_config(dir.path(), "", "2s", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let m = "/api/v1/monitoring";

    // Before the first document (the aggregate emits after 2 s).
    let spec = Spec::fetch(&server).await;
    let realtime = format!("{m}/metrics/realtime");
    let history = format!("{m}/metrics/history");
    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url(&realtime)),
        "get",
        &realtime,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("metrics_unavailable"))
    );
    let (status, _, _) = call(
        &server,
        &spec,
        http.get(server.url(&history)),
        "get",
        &history,
    )
    .await;
    assert_eq!(status, 503);
    let status_path = format!("{m}/status");
    let (_, _, body) = call(
        &server,
        &spec,
        http.get(server.url(&status_path)),
        "get",
        &status_path,
    )
    .await;
    assert_eq!(body["status"], "initializing");

    // Exactly the routes the server has.
    let expected: BTreeSet<String> = [
        "GET /api/v1/monitoring/metrics/realtime",
        "GET /api/v1/monitoring/metrics/history",
        "GET /api/v1/monitoring/health",
        "GET /api/v1/monitoring/status",
        "GET /api/v1/openapi.json",
        "POST /api/v1/workflows/{id}/control",
        "GET /metrics",
        "GET /ws/monitoring",
        "GET /api/v1/monitoring/alerts",
        "GET /api/v1/monitoring/alerts/{id}",
        "POST /api/v1/monitoring/alerts/{id}/acknowledge",
        "POST /api/v1/monitoring/alerts/{id}/resolve",
        "GET /api/v1/monitoring/rules",
        "POST /api/v1/monitoring/rules",
        "GET /api/v1/monitoring/rules/{id}",
        "PUT /api/v1/monitoring/rules/{id}",
        "DELETE /api/v1/monitoring/rules/{id}",
        "POST /api/v1/monitoring/rules/{id}/mute",
        "DELETE /api/v1/monitoring/rules/{id}/mute",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(spec.routes(), expected);
    // The schemas bite: a wrong body is caught.
    let wrong = json!({"data": {"overview": 1}, "timestamp": "t", "ttl_ms": 5});
    assert!(!spec.errors("get", &realtime, 200, &wrong).is_empty());

    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, headers, body) = call(
            &server,
            &spec,
            http.get(server.url(&realtime)),
            "get",
            &realtime,
        )
        .await;
        if status == 200 {
            assert_eq!(headers["cache-control"], "no-cache, must-revalidate");
            break body;
        }
        assert!(Instant::now() < deadline, "no document within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body["ttl_ms"].as_u64().unwrap() <= 2000, "{body}");
    assert!(body["data"]["history"].as_array().unwrap().len() <= 1);
    assert!(body["data"]["overview"]["total_workflows"]
        .as_u64()
        .is_some());

    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url(&history)),
        "get",
        &history,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["interval_ms"], 2000);

    let health = format!("{m}/health");
    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url(&health)),
        "get",
        &health,
    )
    .await;
    assert_eq!((status, body["healthy"].as_bool()), (200, Some(true)));
    assert_eq!(body["checks"]["demo"], "ok");

    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url(&status_path)),
        "get",
        &status_path,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("running")));
    assert_eq!(body["pipeline"], "http-test");
    assert_eq!(body["components"]["live"]["type"], "websocket");
    assert_eq!(body["components"]["live"]["clients"], 0);
    assert!(body["components"]["demo"]["records_out"].as_u64().unwrap() > 0);
    assert!(!body.to_string().contains(TOKEN));

    let (status, headers, _) = call(
        &server,
        &spec,
        http.get(server.url("/metrics")),
        "get",
        "/metrics",
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));

    // Control: each status its operation lists.
    let control = "/api/v1/workflows/{id}/control";
    let post = |id: &str| http.post(server.url(&format!("/api/v1/workflows/{id}/control")));
    let (status, headers, body) = call(
        &server,
        &spec,
        post("wf-1").json(&json!({"action": "pause"})),
        "post",
        control,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    let authed = |id: &str| post(id).bearer_auth(TOKEN);
    let (status, _, body) = call(
        &server,
        &spec,
        authed("wf-1")
            .header("content-type", "text/plain")
            .body("{\"action\":\"pause\"}"),
        "post",
        control,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let huge = json!({"action": "pause", "reason": "x".repeat(70 * 1024)});
    let (status, _, body) = call(&server, &spec, authed("wf-1").json(&huge), "post", control).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (status, _, body) = call(
        &server,
        &spec,
        authed("wf-1")
            .header("content-type", "application/json")
            .body("{\"action\":"),
        "post",
        control,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, _, body) = call(
        &server,
        &spec,
        authed("wf-1").json(&json!({"action": "pause", "colour": 1})),
        "post",
        control,
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("colour"))
    );
    let (status, _, body) = call(
        &server,
        &spec,
        authed("wf-1").json(&json!({"action": "explode"})),
        "post",
        control,
    )
    .await;
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (400, Some("invalid_action"), Some("action"))
    );
    let (status, _, body) = call(
        &server,
        &spec,
        authed("wf%201").json(&json!({"action": "pause"})),
        "post",
        control,
    )
    .await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")));
    let (status, _, body) = call(
        &server,
        &spec,
        authed("wf-1").json(&json!({"action": "pause", "reason": "r"})),
        "post",
        control,
    )
    .await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (202, Some("queued")),
        "{body}"
    );

    // Unknown paths and wrong methods: the §4 body, never HTML.
    let response = http.get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let (status, headers, body) = call(
        &server,
        &spec,
        http.delete(server.url(&realtime)),
        "get",
        &realtime,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, headers, _) = call(
        &server,
        &spec,
        http.get(server.url("/api/v1/workflows/wf-1/control")),
        "post",
        control,
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    // HEAD where GET is: the headers without the body.
    let response = http.head(server.url(&realtime)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // A plain GET on the WebSocket path says what it takes.
    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url("/ws/monitoring")),
        "get",
        "/ws/monitoring",
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("Upgrade"))
    );

    // Bad requests are counted (by the sink that opened the server).
    let (_, _, body) = call(
        &server,
        &spec,
        http.get(server.url(&status_path)),
        "get",
        &status_path,
    )
    .await;
    let refused = body["components"]["api"]["http_requests_refused"]
        .as_u64()
        .unwrap();
    assert!(refused >= 11, "{refused} refused requests counted: {body}");

    assert!(server.stop().success());
}

#[tokio::test]
async fn closed_reads_need_the_token_and_the_websocket_takes_it_as_a_subprotocol() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = rest_and_websocket(&format!("token = \"{TOKEN}\"\nauth_reads = true"));
    let config = write_config(dir.path(), "", "500ms", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let spec = Spec::fetch(&server).await;
    for path in [
        "/api/v1/monitoring/metrics/realtime",
        "/api/v1/monitoring/metrics/history",
        "/api/v1/monitoring/status",
        "/metrics",
    ] {
        let (status, headers, body) =
            call(&server, &spec, http.get(server.url(path)), "get", path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let response = http
            .get(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_ne!(response.status(), 401, "{path}");
    }
    // Health stays open for load balancers.
    let response = http
        .get(server.url("/api/v1/monitoring/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws = server.ws_url("/ws/monitoring");
    let refused = tokio_tungstenite::connect_async(ws.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let mut request = ws.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("flowpulse, bearer.{TOKEN}").parse().unwrap(),
    );
    let (_socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "flowpulse");
    assert!(server.stop().success());
}

#[tokio::test]
async fn control_queues_one_entry_per_idempotency_key_as_the_contract_says() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let stream = format!("{}:control", prefix(&url, "control"));
    let sinks = format!(
        "{}\ncontrol = {{ url = \"{url}\", stream = \"{stream}\", maxlen = 1000 }}\n",
        rest_and_websocket(&format!("token = \"{TOKEN}\""))
            .split("[sinks.live]")
            .next()
            .unwrap()
    );
    let config = write_config(dir.path(), "", "1s", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let send = |key: Option<&str>| {
        let mut request = http
            .post(server.url("/api/v1/workflows/wf-000123/control"))
            .bearer_auth(TOKEN)
            .header("x-requested-by", "dashboard")
            .json(&json!({"action": "pause", "reason": "agent scaffold failing"}));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    // The command key lives 24 h in the shared Redis: a key of this run's own.
    let key = format!("k-{stream}");
    let first = send(Some(&key)).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again: Value = send(Some(&key)).await.unwrap().json().await.unwrap();
    assert_eq!(first, again, "the same key answers the same");
    let other: Value = send(None).await.unwrap().json().await.unwrap();
    assert_eq!(other["data"]["status"], "queued", "{other}");
    assert_ne!(other["data"]["command_id"], first["data"]["command_id"]);

    let mut conn = connection(&url);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        entries.ids.len(),
        2,
        "one entry per key, one per keyless request"
    );
    let entry = &entries.ids[0];
    assert_eq!(entry.id, first["data"]["stream_id"].as_str().unwrap());
    let topic: String = entry.get("topic").unwrap();
    assert_eq!(topic, "workflow:control");
    let payload: String = entry.get("payload").unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    let command_id = first["data"]["command_id"].as_str().unwrap();
    assert_eq!(payload["key"], "wf-000123");
    assert_eq!(payload["msg"]["message_id"], command_id);
    assert_eq!(
        payload["msg"]["metadata"]["stage"],
        "orchestrator:workflow:control"
    );
    assert_eq!(payload["msg"]["payload"]["action"], "pause");
    assert_eq!(
        payload["msg"]["payload"]["reason"],
        "agent scaffold failing"
    );
    assert_eq!(payload["msg"]["payload"]["requested_by"], "api:dashboard");
    assert_eq!(
        uuid_version(command_id),
        '5',
        "a keyed command id is a UUIDv5: {command_id}"
    );
    let remembered: String = redis::cmd("GET")
        .arg(format!("flowpulse:control:command:{command_id}"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(remembered, entry.id);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("flowpulse:control:command:{command_id}"))
        .query(&mut conn)
        .unwrap();
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
    assert!(server.stop().success());
}

fn uuid_version(id: &str) -> char {
    id.chars().nth(14).unwrap()
}

#[tokio::test]
async fn control_without_redis_answers_503_writes_nothing_and_recovers_when_redis_returns() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let sinks = format!(
        "{}\ncontrol = {{ url = \"redis://127.0.0.1:{port}\" }}\n",
        rest_and_websocket(&format!("token = \"{TOKEN}\""))
            .split("[sinks.live]")
            .next()
            .unwrap()
    );
    let config = write_config(dir.path(), "", "1s", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    // Found at start, before anyone asks for control.
    let health = poll_json(
        &server,
        "/api/v1/monitoring/health",
        Duration::from_secs(10),
        "not found at start",
        |health| health["healthy"] == false,
    )
    .await;
    assert!(
        health["checks"]
            .to_string()
            .contains(&format!("127.0.0.1:{port}")),
        "{health}"
    );
    for _ in 0..3 {
        let response = http
            .post(server.url("/api/v1/workflows/wf-1/control"))
            .bearer_auth(TOKEN)
            .json(&json!({"action": "cancel"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "control_unavailable");
    }
    let health: Value = http
        .get(server.url("/api/v1/monitoring/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["healthy"], false, "{health}");
    let logs = server.log_lines();
    let outage_logs = logs.iter().filter(|l| l.contains("cannot reach")).count();
    assert_eq!(outage_logs, 1, "logged once per outage: {logs:?}");

    // Redis comes up on that port: the outage ends without another request.
    let redis_dir = tempfile::tempdir().unwrap();
    common::redis_helpers::start_redis(redis_dir.path(), port, false);
    poll_json(
        &server,
        "/api/v1/monitoring/health",
        Duration::from_secs(15),
        "the outage never ended",
        |health| health["healthy"] == true,
    )
    .await;
    let response = http
        .post(server.url("/api/v1/workflows/wf-1/control"))
        .bearer_auth(TOKEN)
        .json(&json!({"action": "cancel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    common::redis_helpers::shutdown_redis(port);
    assert!(server.stop().success());
}

#[tokio::test]
async fn control_is_503_naming_the_option_when_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "",
        "1s",
        &rest_and_websocket(&format!("token = \"{TOKEN}\"")),
    );
    let server = start(dir.path(), &config);
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/workflows/wf-1/control"))
        .bearer_auth(TOKEN)
        .json(&json!({"action": "retry"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "control_not_configured");
    assert_eq!(body["error"]["field"], "control");
    assert!(server.stop().success());
}

#[tokio::test]
async fn the_token_file_is_private_reused_after_a_restart_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "1s", &rest_and_websocket("token = \"\""));
    let first = start(dir.path(), &config);
    let token = first
        .shown_token
        .clone()
        .expect("the token is shown at start");
    let file = dir.path().join("data/api-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    let response = reqwest::Client::new()
        .post(first.url("/api/v1/workflows/wf-1/control"))
        .bearer_auth(&token)
        .json(&json!({"action": "retry"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "authorized, then refused: no control"
    );
    let logs = first.log_lines();
    assert!(first.stop().success());
    assert!(
        logs.iter().all(|l| !l.contains(&token)),
        "a log line holds the token"
    );

    let second = start(dir.path(), &config);
    assert_eq!(second.shown_token.as_deref(), Some(token.as_str()));
    assert!(second.stop().success());
}

#[tokio::test]
async fn metrics_text_parses_as_prometheus_and_names_every_component() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "300ms", &rest_and_websocket(""));
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = http
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("flowpulse_workflows{") {
            break text;
        }
        assert!(Instant::now() < deadline, "no workflow metrics: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let names: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "flowpulse_workflows",
        "flowpulse_workflow_error_ratio",
        "flowpulse_workflow_duration_seconds",
        "flowpulse_component_records_in_total",
        "flowpulse_component_clients",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let components: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "flowpulse_component_records_in_total")
        .filter_map(|s| s.labels.get("component"))
        .collect();
    assert_eq!(
        components,
        BTreeSet::from(["api", "demo", "live", "metrics"])
    );
    if let Ok(output) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
    {
        assert!(
            output.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(server.stop().success());
}

#[test]
fn one_path_twice_at_one_address_names_both_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = r#"[sinks.api]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"

[sinks.api2]
type = "rest"
inputs = ["metrics"]
address = "127.0.0.1:0"
max_body = "1MiB"
"#;
    let config = write_config(dir.path(), "", "1s", sinks);
    let output = std::process::Command::new(binary())
        .args(["validate", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sink \"api2\"")
            && stderr.contains(
                "/api/v1/monitoring/health at 127.0.0.1:0 is also mounted by sink \"api\""
            ),
        "{stderr}"
    );
    assert!(
        stderr.contains("`max_body`: differs from sink \"api\""),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_fails_the_start_naming_sink_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let sinks = rest_and_websocket("").replace("127.0.0.1:0", &address);
    let config = write_config(dir.path(), "", "1s", &sinks);
    let output = run_to_end(dir.path(), &config, Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sink \\\"api\\\"")
            && stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    drop(taken);
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "",
        "1s",
        &rest_and_websocket(&format!("token = \"{TOKEN}\"")),
    );
    let server = start(dir.path(), &config);
    let body = r#"{"action":"retry"}"#;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/workflows/wf-1/control HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(server.child.as_ref().unwrap());
    // The rest of the body arrives while the pipeline drains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_string(&mut answer))
        .await
        .expect("an answer before the server stops")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the request in flight was not answered: {answer:?}"
    );
    assert!(answer.contains("control_not_configured"), "{answer}");
    assert!(server.wait().success());
}

#[tokio::test]
async fn cors_lets_listed_origins_in_and_leaves_same_origin_requests_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = rest_and_websocket("cors_origins = [\"https://ops.example.com\"]");
    let config = write_config(dir.path(), "", "1s", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let health = server.url("/api/v1/monitoring/health");
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/v1/workflows/wf-1/control"),
        )
        .header("origin", "https://ops.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
    assert!(preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let refused = http
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/v1/workflows/wf-1/control"),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert_ne!(refused.status(), 204);
    let listed = http
        .get(&health)
        .header("origin", "https://ops.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
    let same_origin = http
        .get(&health)
        .header("origin", format!("http://{}", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), 200, "a same-origin request is served");
    assert!(same_origin
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(server.stop().success());
}

/// The next JSON text frame of `kind` from a WebSocket.
async fn next_frame_of(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> Value {
    use futures::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within 15 s"))
            .expect("open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}

#[tokio::test]
async fn an_alert_is_stored_acknowledged_and_resolved_over_rest_and_clients_hear_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("alerts.db");
    let sinks = format!(
        r#"[stores.main]
url = "sqlite://{db}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"
when_full = "drop_newest"

[[processors.alerts.rules]]
name = "Workflows exist"
severity = "warning"
condition = {{ metric = "overview.total_workflows", operator = ">", value = 0 }}
channels = ["dashboard"]

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

[sinks.live]
type = "websocket"
inputs = ["metrics", "alerts"]
address = "127.0.0.1:0"
token = "{TOKEN}"
"#,
        db = db.display()
    );
    let config = write_config(dir.path(), "", "300ms", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let spec = Spec::fetch(&server).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url("/ws/monitoring"))
        .await
        .unwrap();
    let triggered = next_frame_of(&mut socket, "alert:triggered").await;
    let id = triggered["data"]["id"].as_str().unwrap().to_owned();

    let one = "/api/v1/monitoring/alerts/{id}";
    let url = |suffix: &str| server.url(&format!("/api/v1/monitoring/alerts/{id}{suffix}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = call(&server, &spec, http.get(url("")), "get", one).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 404);
        assert!(Instant::now() < deadline, "the alert was never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ack = "/api/v1/monitoring/alerts/{id}/acknowledge";
    let (status, _, _) = call(
        &server,
        &spec,
        http.post(url("/acknowledge")).json(&json!({})),
        "post",
        ack,
    )
    .await;
    assert_eq!(status, 401, "changing needs the token");
    let (status, _, body) = call(
        &server,
        &spec,
        http.post(url("/acknowledge"))
            .bearer_auth(TOKEN)
            .header("x-requested-by", "oncall")
            .json(&json!({"comment": "looking"})),
        "post",
        ack,
    )
    .await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (200, Some("acknowledged")),
        "{body}"
    );
    assert_eq!(body["data"]["acknowledged_by"], "api:oncall");
    let (status, _, again) = call(
        &server,
        &spec,
        http.post(url("/acknowledge"))
            .bearer_auth(TOKEN)
            .json(&json!({})),
        "post",
        ack,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        again["data"]["acknowledged_at"], body["data"]["acknowledged_at"],
        "acknowledging again changes nothing"
    );

    let heard = next_frame_of(&mut socket, "alert:acknowledged").await;
    assert_eq!(heard["data"]["id"], id.as_str());
    assert_eq!(heard["data"]["acknowledged_by"], "api:oncall");

    let resolve = "/api/v1/monitoring/alerts/{id}/resolve";
    let (status, _, body) = call(
        &server,
        &spec,
        http.post(url("/resolve"))
            .bearer_auth(TOKEN)
            .json(&json!({})),
        "post",
        resolve,
    )
    .await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (200, Some("resolved"))
    );
    let (status, _, body) = call(
        &server,
        &spec,
        http.post(url("/resolve"))
            .bearer_auth(TOKEN)
            .json(&json!({})),
        "post",
        resolve,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("alert_resolved"))
    );
    let heard = next_frame_of(&mut socket, "alert:resolved").await;
    assert_eq!(heard["data"]["resolved_by"], "api");

    // Every change is one history row: the notices that followed added none.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, _, body) = call(&server, &spec, http.get(url("")), "get", one).await;
    let history: Vec<&str> = body["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["triggered", "acknowledged", "resolved"], "{body}");
    assert_eq!(body["data"]["history"][1]["comment"], "looking");

    let list = "/api/v1/monitoring/alerts";
    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url("/api/v1/monitoring/alerts?status=resolved&limit=1")),
        "get",
        list,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["id"], id.as_str());
    let (status, _, body) = call(
        &server,
        &spec,
        http.get(server.url("/api/v1/monitoring/alerts?status=open")),
        "get",
        list,
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("status"))
    );
    let (status, _, _) = call(
        &server,
        &spec,
        http.get(server.url("/api/v1/monitoring/alerts/nope")),
        "get",
        one,
    )
    .await;
    assert_eq!(status, 404);
    assert!(server.stop().success());
}

#[tokio::test]
async fn on_the_default_pipeline_a_rule_posted_at_runtime_fires_and_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml"))
        .unwrap()
        .replace("interval = \"5s\"", "interval = \"300ms\"");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, text).unwrap();
    let server = start(dir.path(), &config);
    let token = server.shown_token.clone().expect("the token is shown");
    let http = reqwest::Client::new();
    let spec = Spec::fetch(&server).await;
    let rules = "/api/v1/monitoring/rules";
    let post = |body: Value| http.post(server.url(rules)).bearer_auth(&token).json(&body);

    // Bad rules: the field is named; nothing is stored.
    let bad_metric = json!({"name": "x", "severity": "info",
        "condition": {"metric": "overview.total", "operator": ">", "value": 0}});
    let (status, _, body) = call(&server, &spec, post(bad_metric), "post", rules).await;
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (400, Some("invalid_rule"), Some("condition.metric")),
        "{body}"
    );
    let bad_channel = json!({"name": "x", "severity": "info", "channels": ["pager"],
        "condition": {"metric": "overview.total_workflows", "operator": ">", "value": 0}});
    let (status, _, body) = call(&server, &spec, post(bad_channel), "post", rules).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("channels[0]"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dashboard"),
        "{body}"
    );
    // A value of the wrong type or out of range is the rule's fault too
    // (`invalid_rule`); only a body that is not JSON is `invalid_json`.
    let condition = json!({"metric": "overview.total_workflows", "operator": ">", "value": 0});
    let bad_severity = json!({"name": "x", "severity": "urgent", "condition": condition});
    let mut bad_duration = bad_severity.clone();
    bad_duration["severity"] = json!("info");
    bad_duration["condition"]["duration_ms"] = json!(-5);
    let mut bad_template = bad_duration.clone();
    bad_template["condition"]["duration_ms"] = json!(0);
    bad_template["message"] = json!("{{nope}} at {{value}}");
    for (body, field) in [
        (bad_severity, "severity"),
        (bad_duration, "condition.duration_ms"),
        (bad_template, "message"),
    ] {
        let (status, _, answer) = call(&server, &spec, post(body), "post", rules).await;
        assert_eq!(
            (
                status,
                answer["error"]["code"].as_str(),
                answer["error"]["field"].as_str()
            ),
            (400, Some("invalid_rule"), Some(field)),
            "{answer}"
        );
    }
    let (status, _, answer) = call(
        &server,
        &spec,
        http.post(server.url(rules))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{\"name\": "),
        "post",
        rules,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );

    let rule = json!({"name": "Any workflow", "severity": "warning", "channels": ["dashboard"],
        "condition": {"metric": "overview.total_workflows", "operator": ">", "value": 0}});
    // A dry run says what would fire and stores nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dry = loop {
        let (status, _, body) = call(
            &server,
            &spec,
            http.post(server.url("/api/v1/monitoring/rules?dry_run=true"))
                .bearer_auth(&token)
                .json(&rule),
            "post",
            rules,
        )
        .await;
        if status == 200 && !body["data"]["would_fire"].as_array().unwrap().is_empty() {
            break body;
        }
        assert!(Instant::now() < deadline, "the dry run never fired: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dry["data"]["would_fire"][0]["instance"], "");
    let (_, _, listed) = call(&server, &spec, http.get(server.url(rules)), "get", rules).await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["name"] != "Any workflow"));

    // Pages by name: four config rules, three and then one.
    let (_, _, page) = call(
        &server,
        &spec,
        http.get(server.url(&format!("{rules}?limit=3"))),
        "get",
        rules,
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 3, "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, _, rest) = call(
        &server,
        &spec,
        http.get(server.url(&format!("{rules}?limit=3&cursor={cursor}"))),
        "get",
        rules,
    )
    .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1, "{rest}");
    assert!(rest["next_cursor"].is_null());

    // The config's rules are in the store and change only in the file.
    let config_rule = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == "config")
        .expect("config rules are stored")
        .clone();
    let one = "/api/v1/monitoring/rules/{id}";
    let config_id = config_rule["id"].as_str().unwrap();
    let (status, _, body) = call(
        &server,
        &spec,
        http.put(server.url(&format!("{rules}/{config_id}")))
            .bearer_auth(&token)
            .json(&rule),
        "put",
        one,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("config_rule"))
    );

    let (mut socket, _) = tokio_tungstenite::connect_async(server.ws_url("/ws/monitoring"))
        .await
        .unwrap();
    let (status, headers, created) = call(&server, &spec, post(rule.clone()), "post", rules).await;
    assert_eq!(status, 201, "{created}");
    let rule_id = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("{rules}/{rule_id}")
    );
    let (status, _, body) = call(&server, &spec, post(rule.clone()), "post", rules).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("duplicate_name"))
    );

    // It fires within two intervals (and some slack for the store).
    let fired = loop {
        let frame = next_frame_of(&mut socket, "alert:triggered").await;
        if frame["data"]["rule_id"] == rule_id.as_str() {
            break frame;
        }
    };
    let alert_id = fired["data"]["id"].as_str().unwrap().to_owned();
    let alert_url = server.url(&format!("/api/v1/monitoring/alerts/{alert_id}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while http.get(&alert_url).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the alert was never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = http
        .post(format!("{alert_url}/acknowledge"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let acknowledged = next_frame_of(&mut socket, "alert:acknowledged").await;
    assert_eq!(acknowledged["data"]["id"], alert_id.as_str());
    let body: Value = http
        .get(&alert_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["data"]["history"].as_array().unwrap().len() >= 2,
        "{body}"
    );

    // Muting and deleting.
    let mute = "/api/v1/monitoring/rules/{id}/mute";
    let (status, _, body) = call(
        &server,
        &spec,
        http.post(server.url(&format!("{rules}/{rule_id}/mute")))
            .bearer_auth(&token)
            .json(&json!({"until": "2100-01-01T00:00:00Z"})),
        "post",
        mute,
    )
    .await;
    assert_eq!(
        (status, body["data"]["muted_until"].as_str()),
        (200, Some("2100-01-01T00:00:00.000Z"))
    );
    let (status, _, body) = call(
        &server,
        &spec,
        http.delete(server.url(&format!("{rules}/{rule_id}")))
            .bearer_auth(&token),
        "delete",
        one,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("rule_has_open_alerts"))
    );
    assert!(server.stop().success());
}

#[tokio::test]
async fn racing_acknowledgements_and_resolves_leave_one_consistent_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("alerts.db");
    let sinks = format!(
        r#"[stores.main]
url = "sqlite://{db}"

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "main"

[[processors.alerts.rules]]
name = "Workflows exist"
severity = "warning"
condition = {{ metric = "overview.total_workflows", operator = ">", value = 0 }}

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
"#,
        db = db.display()
    );
    let config = write_config(dir.path(), "", "300ms", &sinks);
    let server = start(dir.path(), &config);
    let http = reqwest::Client::new();
    let list = server.url("/api/v1/monitoring/alerts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let body: Value = http.get(&list).send().await.unwrap().json().await.unwrap();
        if let Some(id) = body["data"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no alert stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let url = |suffix: &str| server.url(&format!("/api/v1/monitoring/alerts/{id}{suffix}"));
    let requests = (0..20).map(|i| {
        let action = if i % 2 == 0 {
            "/acknowledge"
        } else {
            "/resolve"
        };
        http.post(url(action))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
    });
    let answers = futures::future::join_all(requests).await;
    for answer in answers {
        let status = answer.unwrap().status().as_u16();
        assert!(
            status == 200 || status == 409,
            "racing requests answer 200 or 409, not {status}"
        );
    }
    let body: Value = http
        .get(url(""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["status"], "resolved", "{body}");
    let history: Vec<&str> = body["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_status"].as_str().unwrap())
        .collect();
    assert_eq!(
        history.iter().filter(|s| **s == "resolved").count(),
        1,
        "{history:?}"
    );
    assert!(
        history.iter().filter(|s| **s == "acknowledged").count() <= 1,
        "{history:?}"
    );
    assert_eq!(history[0], "triggered");
    assert_eq!(
        *history.last().unwrap(),
        "resolved",
        "nothing after resolved: {history:?}"
    );
    assert!(server.stop().success());
}
