//! In-process API tests: the real axum app over a real service (wasmtime, SQLite in a
//! temporary home), driven with `tower::ServiceExt::oneshot`, no socket. Docker is
//! deliberately unreachable, so container routes answer 503 while wasm works.
//!
//! These are the fast layer under the e2e suite (tests/tests/e2e), which spawns the
//! real binary; they check what a user relies on: status codes, bodies, headers.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt as _;

/// Copies stdin to stdout (one read of up to 60 000 bytes) and logs "echo" to stderr.
const ECHO_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "echo\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 60000))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 32) (i32.const 16))
    (i32.store (i32.const 36) (i32.const 5))
    (drop (call $fd_write (i32.const 2) (i32.const 32) (i32.const 1) (i32.const 8)))))
"#;

/// Logs "something broke" to stderr and exits with code 3.
const FAIL_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "something broke\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3))))
"#;

/// Sleeps one second per byte of input in a host call (poll_oneoff on a relative
/// monotonic clock), then exits 0: "abc" holds its instance ~3 s, a long input holds
/// it far longer than any wait of the tests, so only cancellation can free it early.
const NAP_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; stdin: iovec {buf=1024, len=1024} at 200, byte count at 208.
    (i32.store (i32.const 200) (i32.const 1024))
    (i32.store (i32.const 204) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 200) (i32.const 1) (i32.const 208)))
    ;; subscription at 0: userdata, tag 0 (clock), clock id 1 (monotonic) at 16,
    ;; timeout (ns) at 24, precision at 32, flags 0 (relative) at 40.
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24)
      (i64.mul (i64.extend_i32_u (i32.load (i32.const 208))) (i64.const 1000000000)))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"#;

/// A start function that never ends: instantiation runs it, before any `_start`.
const LOOPING_START_WAT: &str = r#"
(module
  (memory 1)
  (func $spin (loop br 0))
  (start $spin)
  (func (export "_start")))
"#;

/// Long enough for anything these tests wait for; only there so a broken host fails
/// the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid WAT")
}

/// A .tar.gz holding `files`.
fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .to_str()
        .unwrap()
}

/// Runs `check` until it returns `Some`, for up to `within`; panics saying `what` was
/// never seen, with the last value `check` saw.
async fn eventually<T>(
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen within {within:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The app over a fresh home, with Docker unreachable.
struct TestApp {
    app: Router,
    _home: tempfile::TempDir,
}

impl TestApp {
    async fn new() -> TestApp {
        TestApp::with_config(|_| {}).await
    }

    async fn with_config(change: impl FnOnce(&mut newt_host::service::ServerConfig)) -> TestApp {
        let home = tempfile::tempdir().unwrap();
        let mut config = newt_host::service::ServerConfig {
            max_bundle_bytes: 16 << 20,
            max_input_bytes: 1 << 20,
            token: None,
            async_concurrency: 4,
            max_async_backlog: 64,
            max_inflight_bytes: newt_host::service::DEFAULT_MAX_INFLIGHT_BYTES,
            ..Default::default()
        };
        change(&mut config);
        let (service, _docker) = newt_host::build_service(
            home.path(),
            newt_host::ServiceOptions {
                config,
                pooling: false,
                docker_host: Some("unix:///nonexistent/docker.sock".into()),
            },
        )
        .await
        .unwrap();
        TestApp {
            app: newt_host::app(service.clone()),
            _home: home,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body)
    }

    /// A request with a raw body (no content type).
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(body.into())
            .unwrap();
        self.send(request).await
    }

    /// A request with an optional JSON body; the answer's body as JSON (`null` when
    /// empty).
    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let builder = Request::builder().method(method).uri(path);
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        }
        .unwrap();
        let (status, headers, bytes) = self.send(request).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, headers, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.json(Method::GET, path, None).await;
        (status, body)
    }

    /// Deploys `bundle` as `name` with `query` (e.g. `?timeout_ms=500`); asserts 201.
    async fn deploy(&self, name: &str, bundle: Vec<u8>, query: &str) -> Value {
        let (status, _, body) = self
            .request(Method::PUT, &format!("/v1/functions/{name}{query}"), bundle)
            .await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::CREATED, "deploy {name}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn invoke(&self, name: &str, input: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.request(
            Method::POST,
            &format!("/v1/functions/{name}/invoke"),
            input.to_string(),
        )
        .await
    }

    /// The calls of `name`, newest first.
    async fn calls_of(&self, name: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/calls?function={name}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["calls"].as_array().unwrap().clone()
    }
}

/// The `(code, message)` of an error body.
fn error_of(body: &[u8]) -> (String, String) {
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let field = |f: &str| body["error"][f].as_str().unwrap_or_default().to_string();
    (field("code"), field("message"))
}

#[tokio::test]
async fn deploy_answers_created_unchanged_and_refuses_bad_requests() {
    let app = TestApp::new().await;
    let echo = wasm(ECHO_WAT);

    let view = app.deploy("echo", echo.clone(), "?timeout_ms=2500").await;
    assert_eq!(view["name"], "echo", "{view}");
    assert_eq!(view["version"], 1, "{view}");
    assert_eq!(view["runtime"], "wasm", "{view}");
    assert_eq!(view["status"], "ready", "{view}");
    assert_eq!(view["size"], echo.len(), "{view}");
    assert_eq!(view["limits"]["timeout_ms"], 2500, "{view}");
    assert_eq!(view["limits"]["memory_mb"], 128, "{view}");

    // The same bundle and limits again: nothing changes.
    let (status, _, body) = app
        .request(
            Method::PUT,
            "/v1/functions/echo?timeout_ms=2500",
            echo.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let again: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(again, view);

    // Not a wasm module.
    let (status, _, body) = app
        .request(Method::PUT, "/v1/functions/echo", "print('hi')")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(&body).0, "invalid_bundle");

    // No body at all.
    let (status, _, body) = app
        .request(Method::PUT, "/v1/functions/echo", Body::empty())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, message) = error_of(&body);
    assert_eq!(code, "bad_request");
    assert!(message.contains("empty"), "{message}");

    // A name outside [a-z0-9-].
    let (status, _, body) = app
        .request(Method::PUT, "/v1/functions/A_b", echo.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, message) = error_of(&body);
    assert_eq!(code, "bad_request");
    assert!(message.contains("invalid function name"), "{message}");

    // A runtime that does not exist: the message names those that do.
    let (status, _, body) = app
        .request(
            Method::PUT,
            "/v1/functions/echo?runtime=cobol",
            echo.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, message) = error_of(&body);
    assert_eq!(code, "bad_request");
    assert!(message.contains("cobol"), "{message}");
    assert!(
        message.contains("wasm") && message.contains("python"),
        "{message}"
    );

    // A query parameter deploys do not know.
    let (status, _, body) = app
        .request(Method::PUT, "/v1/functions/echo?colour=red", echo.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, message) = error_of(&body);
    assert_eq!(code, "bad_request");
    assert!(message.contains("colour"), "{message}");

    // None of the refused deploys made a version.
    let (status, detail) = app.get("/v1/functions/echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["version"], 1, "{detail}");
    assert_eq!(detail["versions"].as_array().unwrap().len(), 1, "{detail}");
    let (_, list) = app.get("/v1/functions").await;
    assert_eq!(list["functions"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn invoke_echoes_records_the_call_and_reports_failures() {
    let app = TestApp::new().await;
    app.deploy("echo", wasm(ECHO_WAT), "").await;
    app.deploy("fail", wasm(FAIL_WAT), "").await;

    let input = r#"{"hello":"newt"}"#;
    let (status, headers, body) = app.invoke("echo", input).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], input.as_bytes());
    assert_eq!(header_str(&headers, "content-type"), "application/json");
    assert_eq!(header_str(&headers, "x-newt-start"), "cold");
    let timing = header_str(&headers, "server-timing");
    for part in ["queue;dur=", "init;dur=", "exec;dur="] {
        assert!(timing.contains(part), "{timing}");
    }
    let id = header_str(&headers, "x-newt-call-id").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    // The instance went back to the pool: the next call finds it.
    let (status, headers, body) = app.invoke("echo", "again").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"again");
    assert_eq!(header_str(&headers, "x-newt-start"), "warm");
    let second = header_str(&headers, "x-newt-call-id").to_string();
    assert_ne!(second, id);

    // The record is readable as soon as the answer is.
    let (status, call) = app.get(&format!("/v1/calls/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["id"], id.as_str());
    assert_eq!(call["function"], "echo");
    assert_eq!(call["version"], 1);
    assert_eq!(call["status"], "done", "{call}");
    assert_eq!(call["async"], false);
    assert_eq!(call["start"], "cold");
    assert_eq!(call["input"], json!({"hello": "newt"}));
    assert_eq!(call["output"], json!({"hello": "newt"}));
    assert_eq!(call["logs"], "echo\n");
    // By number too.
    let (status, by_num) = app.get(&format!("/v1/calls/{}", call["num"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_num["id"], id.as_str());

    let calls = app.calls_of("echo").await;
    let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), id.as_str()], "newest first");

    // A guest that exits non-zero: 502, and its record says failed.
    let (status, headers, body) = app.invoke("fail", "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(&body).0, "function_failed");
    let failed_id = header_str(&headers, "x-newt-call-id").to_string();
    let (_, call) = app.get(&format!("/v1/calls/{failed_id}")).await;
    assert_eq!(call["status"], "failed", "{call}");
    assert_eq!(call["function"], "fail");
    assert!(
        call["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{call}"
    );
    assert!(
        call["logs"].as_str().unwrap().contains("something broke"),
        "{call}"
    );
    // Filters keep functions apart.
    assert_eq!(app.calls_of("fail").await.len(), 1);
    assert_eq!(app.calls_of("echo").await.len(), 2);
    let (status, failed) = app.get("/v1/calls?status=failed").await;
    assert_eq!(status, StatusCode::OK);
    let failed = failed["calls"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], failed_id.as_str());

    // A call that does not exist.
    let (status, _) = app
        .get("/v1/calls/00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn async_invoke_is_accepted_then_reaches_done() {
    let app = TestApp::new().await;
    app.deploy("echo", wasm(ECHO_WAT), "").await;

    let (status, headers, body) = app
        .request(
            Method::POST,
            "/v1/functions/echo/invoke?async=true",
            "[1,2,3]",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let accepted: Value = serde_json::from_slice(&body).unwrap();
    let id = accepted["call_id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{accepted}");
    let location = format!("/v1/calls/{id}");
    assert_eq!(header_str(&headers, "location"), location);
    assert_eq!(header_str(&headers, "x-newt-call-id"), id);
    assert_eq!(accepted["url"], location.as_str());

    let call = eventually(PATIENCE, "the async call done", async || {
        let (status, call) = app.get(&location).await;
        assert_eq!(status, StatusCode::OK, "{call}");
        match call["status"].as_str() {
            Some("done") => Ok(call),
            Some("pending" | "running") => Err(call.to_string()),
            _ => panic!("the async call ended badly: {call}"),
        }
    })
    .await;
    assert_eq!(call["async"], true);
    assert_eq!(call["input"], json!([1, 2, 3]));
    assert_eq!(call["output"], json!([1, 2, 3]));

    // `async` takes booleans only, and it is the only parameter.
    let (status, _, _) = app
        .request(Method::POST, "/v1/functions/echo/invoke?async=maybe", "x")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = app
        .request(Method::POST, "/v1/functions/echo/invoke?sync=true", "x")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn patch_validates_and_min_warm_fills_the_pool() {
    let app = TestApp::new().await;

    // An unknown function is 404 whatever the body.
    let (status, _, body) = app
        .json(
            Method::PATCH,
            "/v1/functions/ghost",
            Some(json!({"min_warm": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _, _) = app
        .json(
            Method::PATCH,
            "/v1/functions/ghost",
            Some(json!({"colour": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    app.deploy("echo", wasm(ECHO_WAT), "").await;

    // An unknown field: 400 naming the accepted ones.
    let (status, _, body) = app
        .json(
            Method::PATCH,
            "/v1/functions/echo",
            Some(json!({"colour": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for field in [
        "colour",
        "preload",
        "min_warm",
        "max_instances",
        "keep_alive",
        "max_queue",
    ] {
        assert!(message.contains(field), "{field} not in {message}");
    }

    let (status, _, detail) = app
        .json(
            Method::PATCH,
            "/v1/functions/echo",
            Some(json!({"min_warm": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["name"], "echo");
    assert_eq!(detail["policy"]["min_warm"], 2, "{detail}");
    assert_eq!(
        detail["policy_overrides"],
        json!({"min_warm": 2}),
        "{detail}"
    );

    let pool = eventually(PATIENCE, "two idle echo instances", async || {
        let (status, pools) = app.get("/v1/pools").await;
        assert_eq!(status, StatusCode::OK, "{pools}");
        let pool = pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["function"] == "echo")
            .cloned();
        match pool {
            Some(pool) if pool["idle"] == 2 => Ok(pool),
            _ => Err(pools.to_string()),
        }
    })
    .await;
    assert_eq!(pool["busy"], 0, "{pool}");
    assert_eq!(pool["runtime"], "wasm", "{pool}");

    // The warm instances serve the next call.
    let (status, headers, _) = app.invoke("echo", "hi").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_str(&headers, "x-newt-start"), "warm");
}

#[tokio::test]
async fn pools_list_the_wasm_runtime_with_idle_null() {
    let app = TestApp::new().await;
    app.deploy("echo", wasm(ECHO_WAT), "").await;
    let (status, pools) = app.get("/v1/pools").await;
    assert_eq!(status, StatusCode::OK, "{pools}");
    let runtime_pools = pools["runtime_pools"].as_array().unwrap();
    let wasm = runtime_pools
        .iter()
        .find(|p| p["runtime"] == "wasm")
        .unwrap_or_else(|| panic!("no runtime pool for wasm: {pools}"));
    assert!(wasm["idle"].is_null(), "{wasm}");
    assert!(wasm["policy"].is_object(), "{wasm}");
}

#[tokio::test]
async fn delete_removes_the_function_but_keeps_its_calls() {
    let app = TestApp::new().await;
    app.deploy("echo", wasm(ECHO_WAT), "").await;
    let (status, _, _) = app.invoke("echo", "before").await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = app
        .request(Method::DELETE, "/v1/functions/echo", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());

    let (status, body) = app.get("/v1/functions/echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _, body) = app.invoke("echo", "after").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "not_found");
    let (status, _, _) = app
        .request(Method::DELETE, "/v1/functions/echo", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/v1/functions").await;
    assert_eq!(list["functions"], json!([]));
    let (_, pools) = app.get("/v1/pools").await;
    assert_eq!(pools["pools"], json!([]), "{pools}");

    // Its records stay.
    assert_eq!(app.calls_of("echo").await.len(), 1);
}

#[tokio::test]
async fn without_docker_container_deploys_are_unavailable_and_wasm_is_healthy() {
    let app = TestApp::new().await;
    let bundle = tar_gz(&[("main.py", "def handler(event):\n    return event\n")]);
    let (status, _, body) = app
        .request(Method::PUT, "/v1/functions/py?runtime=python", bundle)
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (code, message) = error_of(&body);
    assert_eq!(code, "unavailable");
    assert!(message.contains("Docker engine not reachable"), "{message}");
    let (status, _) = app.get("/v1/functions/py").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused deploy left a function"
    );

    let (status, health) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["wasm"]["reachable"], true, "{health}");
    assert_eq!(health["docker"]["reachable"], false, "{health}");
    assert!(
        health["docker"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{health}"
    );

    // wasm works all the same.
    app.deploy("echo", wasm(ECHO_WAT), "").await;
    let (status, _, body) = app.invoke("echo", "still here").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_cancels_its_call_and_frees_its_instance() {
    let app = TestApp::new().await;
    app.deploy("nap", wasm(NAP_WAT), "?max_instances=1&max_queue=0")
        .await;

    // 25 bytes: a 25 s nap, longer than every wait below, so only the cancellation
    // can free the instance in time.
    let long_nap = "z".repeat(25);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/functions/nap/invoke")
        .body(Body::from(long_nap))
        .unwrap();
    let caller = tokio::spawn(app.app.clone().oneshot(request));

    // The call is running and holds the only instance.
    let id = eventually(PATIENCE, "the call running on the instance", async || {
        let calls = app.calls_of("nap").await;
        let (_, function) = app.get("/v1/functions/nap").await;
        match calls.first() {
            Some(call) if call["status"] == "running" && function["pool"]["busy"] == 1 => {
                Ok(call["id"].as_str().unwrap().to_string())
            }
            _ => Err(format!("{calls:?} {}", function["pool"])),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!caller.is_finished(), "the nap ended early");
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());

    let waits = Duration::from_secs(5);
    let call = eventually(waits, "the call recorded cancelled", async || {
        let (_, call) = app.get(&format!("/v1/calls/{id}")).await;
        if call["status"] == "cancelled" {
            Ok(call)
        } else {
            Err(call.to_string())
        }
    })
    .await;
    assert!(
        call["error"]
            .as_str()
            .is_some_and(|e| e.contains("went away")),
        "{call}"
    );
    eventually(waits, "the instance released", async || {
        let (_, function) = app.get("/v1/functions/nap").await;
        let pool = &function["pool"];
        if pool["busy"] == 0 {
            Ok(())
        } else {
            Err(pool.to_string())
        }
    })
    .await;

    // With max_instances=1 and no queue, a stuck slot would refuse this with 429.
    let (status, headers, body) = tokio::time::timeout(PATIENCE, app.invoke("nap", "abc"))
        .await
        .expect("the next call answered");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let next = header_str(&headers, "x-newt-call-id");
    let (_, call) = app.get(&format!("/v1/calls/{next}")).await;
    assert_eq!(call["status"], "done", "{call}");
    let (_, function) = app.get("/v1/functions/nap").await;
    assert_eq!(function["pool"]["busy"], 0, "{function}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_a_start_function_that_never_ends() {
    let app = TestApp::new().await;
    app.deploy("echo", wasm(ECHO_WAT), "").await;
    app.deploy("looping", wasm(LOOPING_START_WAT), "?timeout_ms=500")
        .await;

    let looping = {
        let app = app.app.clone();
        tokio::spawn(async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri("/v1/functions/looping/invoke")
                .body(Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, headers, body)
        })
    };
    // Another user is served while the start function spins.
    let (status, _, body) = tokio::time::timeout(PATIENCE, app.invoke("echo", "hi"))
        .await
        .expect("echo answered while the start function spins");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hi");

    let (status, headers, body) = tokio::time::timeout(PATIENCE, looping)
        .await
        .expect("the looping call ended at its deadline")
        .unwrap();
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (code, message) = error_of(&body);
    assert_eq!(code, "timeout");
    assert!(message.contains("start function"), "{message}");
    let id = header_str(&headers, "x-newt-call-id");
    let (_, call) = app.get(&format!("/v1/calls/{id}")).await;
    assert_eq!(call["status"], "timeout", "{call}");

    // And after it.
    let (status, _, _) = app.invoke("echo", "again").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn home_database_and_caches_are_private_to_newts_user() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::new().await;
    let home = app._home.path();
    app.deploy("echo", wasm(ECHO_WAT), "").await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(home), 0o700);
    for dir in ["cas", "cache", "docker"] {
        assert_eq!(mode(&home.join(dir)), 0o700, "{dir}");
    }
    assert_eq!(mode(&home.join("newt.db")), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_hosts_payload_budget_wait_then_get_429() {
    // Room for one call at the default limits (6 MiB output + 1 MiB logs + input).
    let app = TestApp::with_config(|c| c.max_inflight_bytes = 8 << 20).await;
    app.deploy("nap", wasm(NAP_WAT), "?timeout_ms=10000").await;
    app.deploy("echo", wasm(ECHO_WAT), "?timeout_ms=400").await;
    let app = std::sync::Arc::new(app);
    let sleeper = {
        let app = app.clone();
        tokio::spawn(async move { app.invoke("nap", "ab").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The budget is taken: this call waits for room until its deadline, then is told.
    let (status, _, body) = app.invoke("echo", "hi").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:?}");
    let message = String::from_utf8_lossy(&body).to_string();
    assert!(message.contains("budget"), "{message}");
    let (status, _, _) = sleeper.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // Room again once the sleeper is done.
    let (status, _, body) = app.invoke("echo", "hi").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}
