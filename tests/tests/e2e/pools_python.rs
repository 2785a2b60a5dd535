//! Preload policies on the container backend: cold, prewarmed (runtime-level
//! containers waiting for init) and warm Python calls; keep_alive; SIGTERM.

use crate::containers::deploy_python;
use crate::support::{eventually, get_json, header, http, invoke};
use newt_tests::{Server, containers_of, docker_available, tar_gz};
use serde_json::Value;
use std::time::Duration;

const SOURCE: &str = r#"
import time

def handler(event):
    time.sleep((event or {}).get("sleep", 0))
    return "ok"
"#;

fn bundle() -> Vec<u8> {
    tar_gz(&[("main.py", SOURCE.as_bytes())])
}

async fn start_of(server: &Server, name: &str, input: &str) -> String {
    let response = invoke(server, name, input).await;
    assert_eq!(response.status(), 200);
    header(&response, "x-newt-start")
}

#[tokio::test]
async fn python_policy_none_is_always_cold_and_leaves_no_container() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(&server, "strict", bundle(), "&preload=none").await;
    for _ in 0..3 {
        assert_eq!(start_of(&server, "strict", "{}").await, "cold");
    }
    // Each call answers first; its container is removed right after.
    eventually(30, "every container removed", async || {
        containers_of(&server).is_empty()
    })
    .await;
}

#[tokio::test]
async fn python_min_warm_starts_containers_before_any_call() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(&server, "ready", bundle(), "&preload=function&min_warm=2").await;
    eventually(600, "two warm containers", async || {
        containers_of(&server).len() == 2
    })
    .await;
    assert_eq!(start_of(&server, "ready", "{}").await, "warm");
}

#[tokio::test]
async fn python_runtime_level_containers_are_taken_and_refilled() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    prewarm_python(&server).await;

    deploy_python(&server, "fresh", bundle(), "").await;
    assert_eq!(start_of(&server, "fresh", "{}").await, "prewarmed");
    // The container now belongs to the function; the runtime level refills.
    assert_eq!(start_of(&server, "fresh", "{}").await, "warm");
    eventually(600, "the runtime-level pool refilled", async || {
        generic_idle(&server).await == 1
    })
    .await;
}

#[tokio::test]
async fn python_idle_containers_go_after_keep_alive() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(&server, "bursty", bundle(), "&keep_alive=1s&min_warm=0").await;
    let burst = (0..3).map(|_| invoke(&server, "bursty", r#"{"sleep":0.5}"#));
    for response in futures::future::join_all(burst).await {
        assert_eq!(response.status(), 200);
    }
    assert!(!containers_of(&server).is_empty());
    eventually(60, "idle containers removed", async || {
        containers_of(&server).is_empty()
    })
    .await;
    let (_, function) = get_json(&server, "/v1/functions/bursty").await;
    let destroyed: &Value = &function["pool"]["destroyed"]["keep_alive"];
    assert!(destroyed.as_u64().unwrap_or(0) >= 1, "{function}");
}

#[tokio::test]
async fn sigterm_finishes_python_calls_then_removes_every_container() {
    if !docker_available() {
        return;
    }
    let mut server = Server::start();
    deploy_python(&server, "slow", bundle(), "&min_warm=1").await;
    eventually(600, "a warm container", async || {
        containers_of(&server).len() == 1
    })
    .await;
    let url = server.url("/v1/functions/slow/invoke");
    let in_flight = tokio::spawn(async move {
        http()
            .post(url)
            .body(r#"{"sleep":1}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let home = server.home.clone();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(in_flight.await.unwrap(), 200);
    let label = format!("label=newt.host={}", newt_tests::host_label(&home));
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &label])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "containers left after shutdown");
}

/// Asks the python runtime for one runtime-level (generic) container and waits until
/// it is idle.
pub(crate) async fn prewarm_python(server: &Server) {
    let response = http()
        .patch(server.url("/v1/runtimes/python"))
        .json(&serde_json::json!({"preload": "runtime", "min_warm": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(600, "a runtime-level container", async || {
        generic_idle(server).await == 1
    })
    .await;
}

/// Idle runtime-level containers of the python runtime.
pub(crate) async fn generic_idle(server: &Server) -> u64 {
    let (_, pools) = get_json(server, "/v1/pools").await;
    pools["runtime_pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["runtime"] == "python")
        .map_or(0, |p| p["idle"].as_u64().unwrap_or(0))
}
