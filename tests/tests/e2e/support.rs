//! Small HTTP helpers shared by the test modules.

use newt_tests::Server;
use reqwest::Response;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The text of the server's `/metrics`.
pub async fn metrics_text(server: &Server) -> String {
    http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A counter of `/metrics` by the start of its line (name and labels).
pub async fn metric(server: &Server, line_start: &str) -> u64 {
    let text = metrics_text(server).await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Deploys `bytes` as `name` with an optional query, asserting success.
pub async fn deploy(server: &Server, name: &str, bytes: &[u8], query: &str) -> Value {
    let response = http()
        .put(server.url(&format!("/v1/functions/{name}{query}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "deploy {name}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

pub async fn invoke(server: &Server, name: &str, input: &str) -> Response {
    http()
        .post(server.url(&format!("/v1/functions/{name}/invoke")))
        .body(input.to_string())
        .send()
        .await
        .unwrap()
}

pub async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let response = http().get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The `{"error": {"code", "message"}}` body of an error response.
pub async fn error_of(response: Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Polls a call until it reaches a final status, up to `secs` seconds.
pub async fn wait_for_call(server: &Server, id: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (status, call) = get_json(server, &format!("/v1/calls/{id}")).await;
        assert_eq!(status, 200, "{call}");
        let s = call["status"].as_str().unwrap_or_default();
        if matches!(s, "done" | "failed" | "timeout") {
            return call;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "call {id} still {s} after {secs}s; server log:\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 100 ms until it holds, failing after `secs`.
pub async fn eventually(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
