//! The two holes the call-path redesign closed, as a new user found them: a module
//! whose start function never ends, and clients that give up mid-call.

use crate::containers::deploy_python;
use crate::support::{deploy, eventually, get_json, invoke};
use newt_tests::{Server, containers_of, docker_available, fixture, tar_gz};
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_looping_start_function_does_not_hang_the_server() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    // Two pre-started instances: the pool's background create runs the start function.
    deploy(
        &server,
        "looping",
        fixture!("looping-start"),
        "?preload=function&min_warm=2&timeout_ms=1000",
    )
    .await;

    // Every other user keeps being answered while those starts spin.
    for _ in 0..5 {
        let asked = Instant::now();
        let (status, _) = get_json(&server, "/healthz").await;
        assert_eq!(status, 200);
        let response = invoke(&server, "echo", "hi").await;
        assert_eq!(response.status(), 200);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "healthz + echo took {:?}",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A call of the looping function ends at its deadline as a timeout.
    let response = invoke(&server, "looping", "").await;
    assert_eq!(response.status(), 504);
    let id = response.headers()["x-newt-call-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("start function"),
        "{body}"
    );
    let (_, call) = get_json(&server, &format!("/v1/calls/{id}")).await;
    assert_eq!(call["status"], "timeout", "{call}");
}

/// Two calls whose clients give up after 0.3 s, on a function with room for exactly
/// two instances and no queue.
async fn give_up_twice(server: &Server, name: &str, input: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = server.url(&format!("/v1/functions/{name}/invoke"));
    let (a, b) = tokio::join!(
        client.post(&url).body(input.to_string()).send(),
        client.post(&url).body(input.to_string()).send()
    );
    assert!(
        a.is_err() && b.is_err(),
        "the calls should have outlived 0.3 s"
    );
}

/// The calls of `name`, newest first.
async fn calls_of(server: &Server, name: &str) -> Vec<Value> {
    let (status, body) = get_json(server, &format!("/v1/calls?function={name}")).await;
    assert_eq!(status, 200, "{body}");
    body["calls"].as_array().unwrap().clone()
}

async fn pool_of(server: &Server, name: &str) -> Value {
    let (_, function) = get_json(server, &format!("/v1/functions/{name}")).await;
    function["pool"].clone()
}

#[tokio::test]
async fn clients_that_give_up_mid_call_release_their_instances() {
    let server = Server::start();
    deploy(
        &server,
        "nap",
        fixture!("nap3"),
        "?max_instances=2&max_queue=0",
    )
    .await;
    give_up_twice(&server, "nap", "").await;

    eventually(5, "both calls recorded cancelled", async || {
        let calls = calls_of(&server, "nap").await;
        calls.len() == 2 && calls.iter().all(|c| c["status"] == "cancelled")
    })
    .await;
    let pool = pool_of(&server, "nap").await;
    assert_eq!(pool["busy"], 0, "{pool}");
    assert_eq!(pool["destroyed"]["cancelled"], 2, "{pool}");
    let calls = calls_of(&server, "nap").await;
    assert!(
        calls[0]["error"]
            .as_str()
            .unwrap()
            .contains("caller went away"),
        "{calls:?}"
    );

    // The function is not bricked: the next call gets an instance and finishes.
    let response = invoke(&server, "nap", "").await;
    assert_eq!(response.status(), 200, "{}", server.log());
    assert_eq!(pool_of(&server, "nap").await["busy"], 0);
}

const SLEEPY_PY: &str = r#"
import time

def handler(event):
    time.sleep((event or {}).get("sleep", 0))
    return "awake"
"#;

#[tokio::test]
async fn python_clients_that_give_up_leave_no_container_and_no_busy_slot() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(
        &server,
        "sleepy",
        tar_gz(&[("main.py", SLEEPY_PY.as_bytes())]),
        "&max_instances=2&max_queue=0",
    )
    .await;
    // Warm the function once so both calls below reach a running handler quickly.
    let response = invoke(&server, "sleepy", "{}").await;
    assert_eq!(response.status(), 200, "{}", server.log());

    give_up_twice(&server, "sleepy", r#"{"sleep": 3}"#).await;
    // One call took the warm container mid-handler, the other was starting a second
    // one: both are removed, and nothing is left counted as busy.
    eventually(10, "both calls cancelled, no container left", async || {
        let calls = calls_of(&server, "sleepy").await;
        let cancelled = calls.iter().filter(|c| c["status"] == "cancelled").count();
        cancelled == 2 && containers_of(&server).is_empty()
    })
    .await;
    let pool = pool_of(&server, "sleepy").await;
    assert_eq!(pool["busy"], 0, "{pool}");
    assert_eq!(pool["starting"], 0, "{pool}");

    let response = invoke(&server, "sleepy", "{}").await;
    assert_eq!(response.status(), 200, "{}", server.log());
    assert_eq!(pool_of(&server, "sleepy").await["busy"], 0);
}
