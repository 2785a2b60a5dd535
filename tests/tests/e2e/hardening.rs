//! Hostile tenants against the container boundary, on the real Docker engine: how a
//! function's container is created (and what it can see from inside), runtime images
//! that are not image references, anonymous volumes, replies over the frame limit,
//! output over its cap and input nested too deeply.

use crate::containers::deploy_python;
use crate::support::{error_of, eventually, get_json, header, http, invoke};
use newt_tests::{Server, containers_of, docker_available, host_label, tar_gz};
use serde_json::Value;
use std::process::Command;

fn main_py(source: &str) -> Vec<u8> {
    tar_gz(&[("main.py", source.as_bytes())])
}

/// `docker inspect` of one container.
fn inspect(id: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .expect("docker inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

/// The names of every volume on the engine.
fn volumes() -> Vec<String> {
    let out = Command::new("docker")
        .args(["volume", "ls", "-q"])
        .output()
        .expect("docker volume ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The one container of function `name` (deployed with `min_warm=1`), once it is
/// ready in the pool.
async fn the_container(server: &Server, name: &str) -> String {
    eventually(600, "a warm container", async || {
        let (_, function) = get_json(server, &format!("/v1/functions/{name}")).await;
        function["pool"]["idle"] == 1
    })
    .await;
    let containers = containers_of(server);
    assert_eq!(containers.len(), 1, "{containers:?}");
    containers[0].clone()
}

const LIMITS_SEEN_INSIDE: &str = r#"
import os, resource

def handler(event):
    shm = os.statvfs("/dev/shm")
    return {
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "shm_bytes": shm.f_blocks * shm.f_frsize,
        "uid": os.getuid(),
    }
"#;

#[tokio::test]
async fn python_containers_are_created_hardened() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(
        &server,
        "inside",
        main_py(LIMITS_SEEN_INSIDE),
        "&min_warm=1&memory_mb=96",
    )
    .await;
    let id = the_container(&server, "inside").await;
    let container = inspect(&id);
    let host = &container["HostConfig"];
    assert_eq!(host["NetworkMode"], "none", "{host}");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "no-new-privileges"),
        "{host}"
    );
    assert_eq!(host["PidsLimit"], 128);
    assert_eq!(host["Memory"], 96 << 20);
    assert_eq!(host["MemorySwap"], host["Memory"], "no swap");
    assert_eq!(host["ShmSize"], 16 << 20);
    assert_eq!(host["IpcMode"], "private");
    let mut ulimits: Vec<(String, i64, i64)> = host["Ulimits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["Name"].as_str().unwrap().to_string(),
                u["Soft"].as_i64().unwrap(),
                u["Hard"].as_i64().unwrap(),
            )
        })
        .collect();
    ulimits.sort();
    assert_eq!(
        ulimits,
        [("core".into(), 0, 0), ("nofile".into(), 1024, 1024)]
    );
    assert_eq!(container["Config"]["User"], "10001");
    assert_eq!(
        container["Mounts"].as_array().map_or(0, Vec::len),
        0,
        "no volumes: {}",
        container["Mounts"]
    );

    // And what the function sees from inside.
    let response = invoke(&server, "inside", "{}").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-newt-start"), "warm");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["nofile"], serde_json::json!([1024, 1024]), "{seen}");
    assert_eq!(seen["core"], serde_json::json!([0, 0]), "{seen}");
    assert_eq!(seen["shm_bytes"], 16 << 20, "{seen}");
    assert_eq!(seen["uid"], 10001, "{seen}");
}

#[tokio::test]
async fn runtime_images_must_be_image_references() {
    // Refused before the engine is asked anything: no Docker needed.
    let server = Server::start();
    for image in [
        "x/../get?names=a",
        "../../containers/json",
        "Ubuntu",
        "a//b",
        "a:",
        "a#b",
        "a%2f..",
    ] {
        let response = http()
            .post(server.url("/v1/runtimes"))
            .json(&serde_json::json!({"name": "evil", "image": image, "run": "true"}))
            .send()
            .await
            .unwrap();
        let (status, _, message) = error_of(response).await;
        assert!((400..500).contains(&status), "{image}: {status} {message}");
        assert!(
            message.contains("Docker image reference"),
            "{image}: {message}"
        );
    }
    let response = http().get(server.url("/v1/runtimes/evil")).send().await;
    assert_eq!(response.unwrap().status(), 404);
}

/// A runtime image with two VOLUMEs: `/data` (a tmpfs is put there instead of a
/// volume) and `/app/cache`, under the code (a volume, seeded from the image, removed
/// with its container).
const VOLUME_IMAGE: &str = "newt-test/volume-python:1";

#[tokio::test]
async fn image_volumes_are_bounded_and_never_left_behind() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    // The base image must exist (and be current) before building from it.
    deploy_python(
        &server,
        "warmup",
        main_py("def handler(event):\n    return 1\n"),
        "",
    )
    .await;
    let built = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'FROM newt/python:3\\nVOLUME /data /app/cache\\n' | docker build -q -t {VOLUME_IMAGE} -"
        ))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let response = http()
        .post(server.url("/v1/runtimes"))
        .json(&serde_json::json!({
            "name": "pyvol", "image": VOLUME_IMAGE, "path": "/app",
            "run": "python3 /opt/newt/agent.py", "mode": "agent"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let source = r#"
import os

def handler(event):
    with open("/data/scratch", "w") as f:
        f.write("x")
    return sorted(os.listdir("/data"))
"#;
    let response = http()
        .put(server.url("/v1/functions/vol?runtime=pyvol&wait=true&preload=function&min_warm=1"))
        .body(main_py(source))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let id = the_container(&server, "vol").await;
    let container = inspect(&id);
    let tmpfs = &container["HostConfig"]["Tmpfs"];
    assert!(
        tmpfs["/data"].as_str().unwrap().contains("size="),
        "{tmpfs}"
    );
    let mounted: Vec<String> = container["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["Type"], "volume", "{m}");
            assert_eq!(m["Destination"], "/app/cache", "only under the code: {m}");
            m["Name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(mounted.len(), 1, "{}", container["Mounts"]);
    assert!(volumes().contains(&mounted[0]));

    let response = invoke(&server, "vol", "{}").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        serde_json::json!(["scratch"])
    );

    // Deleting the function removes its container, and the volume goes with it.
    let response = http()
        .delete(server.url("/v1/functions/vol"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    eventually(60, "the container removed", async || {
        containers_of(&server).is_empty()
    })
    .await;
    let left = volumes();
    assert!(
        !mounted.iter().any(|v| left.contains(v)),
        "volume {mounted:?} left behind"
    );
}

#[tokio::test]
async fn python_call_cycles_leave_no_volume() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(
        &server,
        "cycle",
        main_py("def handler(event):\n    return event\n"),
        "&preload=none",
    )
    .await;
    let since = unix_seconds();
    for _ in 0..2 {
        assert_eq!(invoke(&server, "cycle", "1").await.status(), 200);
    }
    eventually(30, "every container removed", async || {
        containers_of(&server).is_empty()
    })
    .await;
    // Only this server's containers count: other tests start containers (and their
    // volumes) at the same time, so the engine's total says nothing.
    let left: Vec<String> = volumes_mounted_by(&server, since)
        .into_iter()
        .filter(|v| volumes().contains(v))
        .collect();
    assert!(
        left.is_empty(),
        "volumes left behind by the calls: {left:?}"
    );
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The volumes the engine mounted into `server`'s containers since `since` (unix
/// seconds), from its event log.
fn volumes_mounted_by(server: &Server, since: u64) -> Vec<String> {
    let events = |filters: &[&str], format: &str| -> Vec<String> {
        let mut args = vec![
            "events".to_string(),
            "--since".into(),
            since.to_string(),
            "--until".into(),
            (unix_seconds() + 1).to_string(),
            "--format".into(),
            format.into(),
        ];
        for filter in filters {
            args.extend(["--filter".to_string(), filter.to_string()]);
        }
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let label = format!("label=newt.host={}", host_label(&server.home));
    let ours = events(&["type=container", "event=create", &label], "{{.Actor.ID}}");
    assert!(
        !ours.is_empty(),
        "the calls' containers are in the event log"
    );
    events(
        &["type=volume", "event=mount"],
        "{{.Actor.Attributes.container}} {{.Actor.ID}}",
    )
    .into_iter()
    .filter_map(|line| {
        let (container, volume) = line.split_once(' ')?;
        ours.iter()
            .any(|id| id == container)
            .then(|| volume.to_string())
    })
    .collect()
}

/// A function that reaches past the agent to its frame channel and announces a
/// 1 GiB reply.
const FORGER: &str = r#"
import gc, struct, time, __main__

def handler(event):
    if event == "forge":
        channel = next(o for o in gc.get_objects() if isinstance(o, __main__.Channel))
        channel._writer.write(struct.pack(">I", 1 << 30) + b'{"type":"result"')
        time.sleep(60)
    return "fine"
"#;

#[tokio::test]
async fn a_reply_over_the_frame_limit_fails_the_call_and_removes_the_container() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(&server, "forger", main_py(FORGER), "&min_warm=1").await;
    let first = the_container(&server, "forger").await;
    let started = std::time::Instant::now();
    let response = invoke(&server, "forger", r#""forge""#).await;
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (502, "function_failed"),
        "{message}"
    );
    assert!(
        message.contains("1073741824-byte reply") && message.contains("over the limit of"),
        "{message}"
    );
    assert!(message.contains("removed"), "{message}");
    // Refused at the length prefix: no waiting for a gigabyte, nor for the sleep.
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    eventually(60, "the broken container removed", async || {
        !containers_of(&server).contains(&first)
    })
    .await;
    // The pool goes on with a fresh container.
    let response = invoke(&server, "forger", r#""hello""#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), "fine");
}

#[tokio::test]
async fn oversized_output_and_deep_input_fail_the_call_not_the_container() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let source =
        "def handler(event):\n    return 'x' * event if isinstance(event, int) else len(event)\n";
    deploy_python(&server, "sturdy", main_py(source), "&max_output_bytes=100").await;
    assert_eq!(invoke(&server, "sturdy", "98").await.status(), 200);
    let (status, _, message) = error_of(invoke(&server, "sturdy", "500").await).await;
    assert_eq!(status, 502, "{message}");
    assert!(
        message.contains("output exceeds the limit of 100 bytes: the return value is 502 bytes"),
        "{message}"
    );

    let depth = 100_000;
    let deep = "[".repeat(depth) + &"]".repeat(depth);
    let (status, _, message) = error_of(invoke(&server, "sturdy", &deep).await).await;
    assert_eq!(status, 502, "{message}");
    assert!(message.contains("input is nested too deeply"), "{message}");

    // The same container serves the next call.
    let response = invoke(&server, "sturdy", "[1, 2, 3]").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-newt-start"), "warm");
    assert_eq!(containers_of(&server).len(), 1);
}
