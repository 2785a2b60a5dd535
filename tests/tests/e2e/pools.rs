//! Preload policies and pools, on the wasm backend: start kinds, min_warm, the
//! max_instances cap and its queue, keep_alive, PATCH, redeploys, metrics, SIGTERM.

use crate::support::{deploy, get_json, header, http, invoke, metrics_text};
use newt_tests::{Server, fixture};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn pool(server: &Server, name: &str) -> Value {
    let (_, pools) = get_json(server, "/v1/pools").await;
    pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["function"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls a function's pool until `check` holds, for up to `secs`.
async fn wait_for_pool(
    server: &Server,
    name: &str,
    secs: u64,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = pool(server, name).await;
        if check(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "pool of {name} never got there: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_of(server: &Server, name: &str) -> String {
    let response = invoke(server, name, "x").await;
    assert_eq!(response.status(), 200);
    header(&response, "x-newt-start")
}

#[tokio::test]
async fn policy_none_makes_every_call_cold_and_keeps_nothing() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "?preload=none").await;
    for _ in 0..3 {
        assert_eq!(start_of(&server, "echo").await, "cold");
    }
    let p = pool(&server, "echo").await;
    assert_eq!(p["idle"], 0, "{p}");
    assert_eq!(p["starts"]["cold"], 3, "{p}");
}

#[tokio::test]
async fn function_min_warm_prestarts_instances_and_the_first_call_is_warm() {
    let server = Server::start();
    deploy(
        &server,
        "echo",
        fixture!("echo"),
        "?preload=function&min_warm=2",
    )
    .await;
    let p = wait_for_pool(&server, "echo", 10, |p| p["idle"] == 2).await;
    assert_eq!(p["created"], 2, "two instances exist before any call: {p}");
    assert_eq!(start_of(&server, "echo").await, "warm");
    // The pool refills behind the call.
    wait_for_pool(&server, "echo", 10, |p| p["idle"] == 2 && p["created"] == 3).await;
}

#[tokio::test]
async fn policy_and_limits_can_come_as_json_headers() {
    let server = Server::start();
    let response = http()
        .put(server.url("/v1/functions/echo"))
        .header(
            "x-newt-policy",
            r#"{"preload":"function","min_warm":1,"keep_alive":"5s"}"#,
        )
        .header("x-newt-limits", r#"{"timeout_ms":2500}"#)
        .body(fixture!("echo").to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (_, echo) = get_json(&server, "/v1/functions/echo").await;
    assert_eq!(echo["policy"]["min_warm"], 1, "{echo}");
    assert_eq!(echo["policy"]["keep_alive"], "5s", "{echo}");
    assert_eq!(echo["limits"]["timeout_ms"], 2500, "{echo}");
    let response = http()
        .put(server.url("/v1/functions/bad"))
        .header("x-newt-policy", "min_warm=1")
        .body(fixture!("echo").to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn runtime_preload_makes_a_new_functions_first_call_prewarmed() {
    let server = Server::start();
    deploy(
        &server,
        "echo",
        fixture!("echo"),
        "?preload=runtime&min_warm=1",
    )
    .await;
    assert_eq!(start_of(&server, "echo").await, "prewarmed");
    // The runtime level (engine and linker) is still ready for the next call.
    assert_eq!(start_of(&server, "echo").await, "prewarmed");
}

#[tokio::test]
async fn max_instances_caps_the_pool_and_queued_calls_all_finish() {
    let server = Server::start();
    deploy(
        &server,
        "nap",
        fixture!("nap"),
        "?max_instances=2&max_queue=64",
    )
    .await;
    let watcher = {
        let url = server.url("/v1/pools");
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..200 {
                let pools: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
                if let Some(p) = pools["pools"].as_array().and_then(|a| a.first()) {
                    let total = p["idle"].as_u64().unwrap()
                        + p["busy"].as_u64().unwrap()
                        + p["starting"].as_u64().unwrap();
                    most = most.max(total);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let calls = (0..50).map(|_| invoke(&server, "nap", ""));
    let responses = futures::future::join_all(calls).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    let most = watcher.await.unwrap();
    assert!((1..=2).contains(&most), "saw {most} instances at once");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_nothing_hangs() {
    let server = Server::start();
    // 3 s calls: all 50 requests arrive while the first six hold every place.
    deploy(
        &server,
        "nap",
        fixture!("nap3"),
        "?max_instances=2&max_queue=4",
    )
    .await;
    // One client for all 50: building a client per request (loading TLS roots) took
    // long enough in a debug build that the last requests were sent after places freed.
    let client = http();
    let url = server.url("/v1/functions/nap/invoke");
    let started = Instant::now();
    let calls = (0..50).map(|_| async { client.post(&url).send().await.unwrap() });
    let responses = futures::future::join_all(calls).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok + refused.len(), 50);
    assert!((2..=6).contains(&ok), "{ok} calls ran");
    assert!(refused.iter().all(|r| header(r, "retry-after") == "1"));
    assert!(started.elapsed() < Duration::from_secs(20), "calls hung");
}

#[tokio::test]
async fn keep_alive_evicts_idle_instances_and_patch_applies_without_restart() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    assert_eq!(start_of(&server, "echo").await, "cold");

    let patch = |body: Value| {
        let url = server.url("/v1/functions/echo");
        async move {
            let response = http().patch(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let shown = patch(serde_json::json!({"min_warm": 3})).await;
    assert_eq!(shown["policy"]["min_warm"], 3);
    wait_for_pool(&server, "echo", 10, |p| p["idle"] == 3).await;
    assert_eq!(start_of(&server, "echo").await, "warm");

    patch(serde_json::json!({"min_warm": 0, "keep_alive": "1s"})).await;
    let p = wait_for_pool(&server, "echo", 8, |p| p["idle"] == 0).await;
    assert!(p["destroyed"]["keep_alive"].as_u64().unwrap() >= 2, "{p}");

    patch(serde_json::json!({"preload": "none"})).await;
    assert_eq!(start_of(&server, "echo").await, "cold");

    let response = http()
        .patch(server.url("/v1/functions/echo"))
        .json(&serde_json::json!({"min_warm": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http()
        .patch(server.url("/v1/functions/echo"))
        .json(&serde_json::json!({"warmth": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A runtime's policy reaches its functions that do not override the field.
    let response = http()
        .patch(server.url("/v1/runtimes/wasm"))
        .json(&serde_json::json!({"max_instances": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, echo) = get_json(&server, "/v1/functions/echo").await;
    assert_eq!(echo["policy"]["max_instances"], 3, "{echo}");
    assert_eq!(echo["policy"]["preload"], "none", "{echo}");
}

#[tokio::test]
async fn redeploying_drains_the_old_versions_pool() {
    let server = Server::start();
    deploy(&server, "f", fixture!("echo"), "?min_warm=2").await;
    wait_for_pool(&server, "f", 10, |p| p["idle"] == 2 && p["version"] == 1).await;
    deploy(&server, "f", fixture!("fail"), "").await;
    let p = wait_for_pool(&server, "f", 10, |p| p["version"] == 2 && p["idle"] == 2).await;
    assert_eq!(p["created"], 2, "{p}");
    let (_, pools) = get_json(&server, "/v1/pools").await;
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1, "{pools}");
}

#[tokio::test]
async fn metrics_parse_and_count_the_calls_made() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    deploy(&server, "trap", fixture!("trap"), "").await;
    for _ in 0..5 {
        invoke(&server, "echo", "x").await;
    }
    for _ in 0..2 {
        invoke(&server, "trap", "").await;
    }
    let text = metrics_text(&server).await;
    let mut samples = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(series.starts_with("newt_"), "{line}");
        samples.insert(series.to_string(), value);
    }
    let calls = |f: &str, status: &str| -> f64 {
        samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with("newt_calls_total{")
                    && k.contains(&format!("function=\"{f}\""))
                    && k.contains(&format!("status=\"{status}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(calls("echo", "done"), 5.0, "{text}");
    assert_eq!(calls("trap", "failed"), 2.0, "{text}");
    let counted: f64 = ["cold", "prewarmed", "warm"]
        .iter()
        .map(|s| samples[&format!("newt_call_duration_seconds_count{{start=\"{s}\"}}")])
        .sum();
    assert_eq!(counted, 7.0);
}

#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish() {
    let mut server = Server::start();
    deploy(&server, "nap", fixture!("nap"), "").await;
    let url = server.url("/v1/functions/nap/invoke");
    let in_flight = tokio::spawn(async move { http().post(url).send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(in_flight.await.unwrap(), 200);
}
