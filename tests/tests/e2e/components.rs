//! wasi:http components through the real server: the bench's `http-hello` component
//! (host/bench-fixtures/http-hello, built here for wasm32-wasip2: the same .wasm
//! `wasmtime serve` runs) deploys with `PUT /v1/functions/{name}` like a p1 module and
//! answers `POST /v1/functions/{name}/invoke` with its response body; a component that
//! is not a wasi:http proxy is refused with 422. Without the wasm32-wasip2 target the
//! component tests say so and pass, except in CI (`CI` set), where they fail.

use crate::support::{deploy, error_of, header, http, invoke};
use newt_tests::{Server, fixture};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const GREETING: &str = r#"{"greeting":"Hello, world!"}"#;

/// The http-hello component, built for wasm32-wasip2 the way `newt bench` builds it
/// (once, into its cache).
async fn hello_component() -> Option<Vec<u8>> {
    static BUILT: tokio::sync::OnceCell<Result<PathBuf, String>> =
        tokio::sync::OnceCell::const_new();
    let built = BUILT
        .get_or_init(|| async {
            newt_host::bench::serve::build_component()
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await;
    match built {
        Ok(path) => Some(std::fs::read(path).unwrap()),
        Err(why) if std::env::var_os("CI").is_none() && why.contains("wasm32-wasip2") => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

#[tokio::test]
async fn a_wasi_http_component_deploys_and_answers_invoke() {
    let Some(component) = hello_component().await else {
        return;
    };
    let server = Server::start();
    let deployed = deploy(&server, "hello-http", &component, "").await;
    assert_eq!(deployed["runtime"], "wasm", "{deployed}");

    for _ in 0..3 {
        let response = invoke(&server, "hello-http", "{}").await;
        assert_eq!(response.status().as_u16(), 200);
        assert!(!header(&response, "x-newt-call-id").is_empty());
        assert_eq!(response.text().await.unwrap(), GREETING);
    }

    // On its route the component's own status and headers come back too.
    let routed = http()
        .get(server.url("/fn/hello-http/any/path?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status().as_u16(), 200);
    assert_eq!(header(&routed, "content-type"), "application/json");
    assert_eq!(routed.text().await.unwrap(), GREETING);

    // A p1 module beside it on the same server keeps working.
    deploy(&server, "echo", fixture!("echo"), "").await;
    let echoed = invoke(&server, "echo", "same engine").await;
    assert_eq!(echoed.status().as_u16(), 200);
    assert_eq!(echoed.text().await.unwrap(), "same engine");
}

#[tokio::test]
async fn a_component_that_is_not_a_wasi_http_proxy_is_refused() {
    let server = Server::start();
    // The smallest component: magic, version 0x0d, layer 1, nothing inside. It exports
    // no wasi:http/incoming-handler.
    let empty: &[u8] = b"\0asm\x0d\x00\x01\x00";
    let response = http()
        .put(server.url("/v1/functions/not-a-proxy"))
        .body(empty.to_vec())
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (422, "invalid_bundle"),
        "{message}"
    );
    assert!(message.contains("wasi:http/proxy"), "{message}");
}

/// The same .wasm under `wasmtime serve` answers the same body, where the wasmtime
/// CLI is installed (newt does not need it; `newt bench` compares the two).
#[tokio::test]
async fn the_same_component_answers_alike_under_wasmtime_serve() {
    let Some(component) = hello_component().await else {
        return;
    };
    let Ok(version) = Command::new("wasmtime").arg("--version").output() else {
        eprintln!("skipped: the wasmtime CLI is not installed");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("http_hello.wasm");
    std::fs::write(&wasm, &component).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new("wasmtime")
        .arg("serve")
        .arg(format!("--addr=127.0.0.1:{port}"))
        .arg(&wasm)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match http().get(format!("http://127.0.0.1:{port}/")).send().await {
            Ok(r) => break r.text().await.unwrap(),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                let _ = child.kill();
                panic!("wasmtime serve did not answer in 30 s: {e}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body, GREETING);

    let server = Server::start();
    deploy(&server, "hello-http", &component, "").await;
    let response = invoke(&server, "hello-http", "").await;
    assert_eq!(response.text().await.unwrap(), body);
}
