//! Python functions in containers, on the real Docker engine: deploy, reuse, logs and
//! tracebacks, and hostile functions held by the container's limits.

use crate::support::{error_of, eventually, get_json, header, http, invoke};
use newt_tests::{Server, containers_of, docker_available, tar_gz};
use serde_json::Value;

/// The python dice example, what most container tests deploy.
pub const DICE: &[u8] = include_bytes!("../../../examples/dice-python/main.py");

/// Deploys a Python bundle and waits for its image (`wait=true`).
pub async fn deploy_python(server: &Server, name: &str, bundle: Vec<u8>, query: &str) -> Value {
    let response = http()
        .put(server.url(&format!(
            "/v1/functions/{name}?runtime=python&wait=true{query}"
        )))
        .body(bundle)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(
        status.is_success(),
        "deploy {name}: {status} {body}\n{}",
        server.log()
    );
    serde_json::from_str(&body).unwrap()
}

fn main_py(source: &str) -> Vec<u8> {
    tar_gz(&[("main.py", source.as_bytes())])
}

#[tokio::test]
async fn python_dice_builds_in_the_background_then_reuses_its_container() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    // Without wait: 202 pending at once, ready later.
    let response = http()
        .put(server.url("/v1/functions/dice?runtime=python"))
        .body(tar_gz(&[("main.py", DICE)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let (_, function) = get_json(&server, "/v1/functions/dice").await;
        match function["status"].as_str() {
            Some("ready") => break,
            Some("pending") => {}
            other => panic!("build ended {other:?}: {function}"),
        }
        assert!(std::time::Instant::now() < deadline, "build too slow");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let first = invoke(&server, "dice", r#"{"roll":"4d6"}"#).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-newt-start"), "cold");
    let id = header(&first, "x-newt-call-id");
    let rolls: Value = first.json().await.unwrap();
    let rolls = rolls.as_array().unwrap();
    assert_eq!(rolls.len(), 4);
    assert!(rolls.iter().all(|r| (1..=6).contains(&r.as_u64().unwrap())));

    let second = invoke(&server, "dice", r#"{"roll":"4d6"}"#).await;
    assert_eq!(header(&second, "x-newt-start"), "warm");
    assert_eq!(containers_of(&server).len(), 1, "the container is reused");

    let (_, call) = get_json(&server, &format!("/v1/calls/{id}")).await;
    assert_eq!(call["status"], "done");
    assert!(
        call["logs"].as_str().unwrap().contains("rolling 4d6"),
        "{call}"
    );
}

#[tokio::test]
async fn exceptions_come_back_with_their_traceback_and_prints_as_logs() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let source = r#"
def handler(event, context):
    print("handling", context.call_id)
    if event.get("fail"):
        raise RuntimeError("the answer is not " + str(event["fail"]))
    return {"ok": True}
"#;
    deploy_python(&server, "moody", main_py(source), "").await;

    let ok = invoke(&server, "moody", r#"{"fail":false}"#).await;
    let ok_id = header(&ok, "x-newt-call-id");
    assert_eq!(ok.status(), 200);
    let (_, call) = get_json(&server, &format!("/v1/calls/{ok_id}")).await;
    assert!(
        call["logs"]
            .as_str()
            .unwrap()
            .contains(&format!("handling {ok_id}")),
        "{call}"
    );

    let failed = invoke(&server, "moody", r#"{"fail":42}"#).await;
    let failed_id = header(&failed, "x-newt-call-id");
    let (status, code, message) = error_of(failed).await;
    assert_eq!((status, code.as_str()), (502, "function_failed"));
    assert!(message.contains("Traceback"), "{message}");
    assert!(
        message.contains("RuntimeError: the answer is not 42"),
        "{message}"
    );
    let (_, call) = get_json(&server, &format!("/v1/calls/{failed_id}")).await;
    assert_eq!(call["status"], "failed");

    // The agent survived the exception: the same container serves the next call.
    assert_eq!(invoke(&server, "moody", "{}").await.status(), 200);
    assert_eq!(containers_of(&server).len(), 1);
}

#[tokio::test]
async fn memory_hog_is_killed_out_of_memory() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let source = r#"
def handler(event):
    hoard = []
    while True:
        hoard.append(bytearray(8 * 1024 * 1024))
"#;
    deploy_python(&server, "hog", main_py(source), "&memory_mb=64").await;
    let (status, _, message) = error_of(invoke(&server, "hog", "{}").await).await;
    assert_eq!(status, 502);
    assert!(message.contains("out of memory"), "{message}");
    // The killed container is not reused: it is removed once the call has answered.
    eventually(30, "the killed container's removal", async || {
        containers_of(&server).is_empty()
    })
    .await;
}

#[tokio::test]
async fn fork_bomb_network_and_filesystem_are_contained() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let source = r#"
import os, socket, time

def attempt(action):
    try:
        return "ok: " + str(action())
    except Exception as error:
        return "error: " + repr(error)

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return path

def fork_all():
    forked = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(20)
                os._exit(0)
            forked += 1
    except OSError as error:
        return {"forked": forked, "error": repr(error)}

def handler(event):
    return {
        "fork": fork_all(),
        "network": attempt(lambda: socket.create_connection(("10.255.255.1", 80), timeout=3)),
        "loopback": attempt(lambda: socket.create_connection(("127.0.0.1", int(event["port"])), timeout=3)),
        "app": attempt(lambda: write("/app/evil.py")),
        "etc": attempt(lambda: write("/etc/evil")),
        "tmp": attempt(lambda: write("/tmp/scratch")),
    }
"#;
    deploy_python(&server, "hostile", main_py(source), "").await;
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let response = invoke(&server, "hostile", &format!(r#"{{"port":{port}}}"#)).await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let forked = report["fork"]["forked"].as_u64().unwrap();
    assert!(forked < 128, "the pids limit did not hold: {report}");
    for probe in ["network", "loopback", "app", "etc"] {
        let result = report[probe].as_str().unwrap();
        assert!(result.starts_with("error"), "{probe}: {result}");
    }
    assert!(
        report["tmp"].as_str().unwrap().starts_with("ok"),
        "{report}"
    );
    // The host is unaffected.
    let (status, health) = get_json(&server, "/healthz").await;
    assert_eq!(status, 200, "{health}");
}

#[tokio::test]
async fn deadline_removes_the_container_and_the_next_call_gets_a_fresh_one() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let source = r#"
import time

def handler(event):
    time.sleep(event.get("sleep", 0))
    return "slept"
"#;
    deploy_python(&server, "sleepy", main_py(source), "&timeout_ms=1500").await;
    assert_eq!(invoke(&server, "sleepy", "{}").await.status(), 200);
    let before = containers_of(&server);
    assert_eq!(before.len(), 1);

    let (status, code, _) = error_of(invoke(&server, "sleepy", r#"{"sleep":30}"#).await).await;
    assert_eq!((status, code.as_str()), (504, "timeout"));
    eventually(30, "the timed-out container's removal", async || {
        containers_of(&server).iter().all(|c| !before.contains(c))
    })
    .await;

    let next = invoke(&server, "sleepy", "{}").await;
    assert_eq!(next.status(), 200);
    assert_eq!(header(&next, "x-newt-start"), "cold");
}

#[tokio::test]
async fn requirement_installs_offline_from_a_bundled_wheel() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("wheel.tgz");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/wheel-python/build.sh"
    );
    let built = std::process::Command::new("bash")
        .arg(script)
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    deploy_python(&server, "greet", std::fs::read(&bundle).unwrap(), "").await;
    let response = invoke(&server, "greet", r#"{"name":"Ada"}"#).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello, Ada!");
    assert_eq!(body["library"], "0.1.0");
}

#[tokio::test]
async fn a_zip_bundle_deploys_like_a_tarball() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), DICE).unwrap();
    let zipped = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-c", "dice.zip", "main.py"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(zipped.success());
    let bundle = std::fs::read(dir.path().join("dice.zip")).unwrap();
    deploy_python(&server, "zipped", bundle, "").await;
    let response = invoke(&server, "zipped", r#"{"roll":"5d6"}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        5
    );
}
