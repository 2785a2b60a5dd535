//! The seed platform's API, its curl examples run verbatim; command-mode runtimes;
//! hostile archives; restarts and a missing engine, for container functions.

use crate::containers::{DICE, deploy_python};
use crate::support::{deploy, error_of, get_json, http, invoke};
use newt_tests::{Server, containers_of, docker_available, fixture, tar_gz};
use serde_json::Value;
use std::process::Command;

/// Runs a shell line with `$BASE` set to the server, returning stdout.
fn sh(server: &Server, dir: &std::path::Path, line: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .env("BASE", &server.base)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn the_seed_curl_sequence_works_unchanged() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), DICE).unwrap();
    sh(&server, dir.path(), "tar czf dice.tar.gz main.py");

    let runtime = sh(
        &server,
        dir.path(),
        r#"curl -s -X POST $BASE/registerRuntime -H 'Content-Type: application/json' -d '{"name": "python3", "image": "newt/python:3", "path": "/app", "dependencies": "pip3 install -r requirements.txt", "run": "python3 main.py"}'"#,
    );
    assert_eq!(json(&runtime)["name"], "python3", "{runtime}");

    let function = sh(
        &server,
        dir.path(),
        "curl -s -X POST $BASE/registerFunction/python3/dice -F module=@dice.tar.gz",
    );
    assert_eq!(json(&function)["status"], "ready", "{function}");

    let call = sh(
        &server,
        dir.path(),
        r#"curl -s -X POST $BASE/invokeFunction -H 'Content-Type: application/json' -d '{"funcName": "dice", "params": {"roll": "4d6"}}'"#,
    );
    let call = json(&call);
    assert_eq!(call["status"], "done", "{call}");
    assert_eq!(call["result"].as_array().unwrap().len(), 4, "{call}");
    let num = call["callNum"].as_i64().unwrap();

    let runtimes = json(&sh(&server, dir.path(), "curl -s $BASE/runtimes"));
    assert!(
        runtimes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "python3")
    );
    let functions = json(&sh(&server, dir.path(), "curl -s $BASE/functions"));
    assert_eq!(functions[0]["funcName"], "dice");
    let calls = json(&sh(&server, dir.path(), "curl -s $BASE/calls"));
    assert_eq!(calls[0]["callNum"], num);
    let one = json(&sh(
        &server,
        dir.path(),
        &format!("curl -s $BASE/call/{num}"),
    ));
    assert_eq!(one["funcName"], "dice");
    assert_eq!(one["params"]["roll"], "4d6");
    assert_eq!(one["status"], "done");

    // Call numbers increase per host.
    let again = json(&sh(
        &server,
        dir.path(),
        r#"curl -s -X POST $BASE/invokeFunction -H 'Content-Type: application/json' -d '{"funcName": "dice", "params": {"roll": "1d6"}}'"#,
    ));
    assert!(again["callNum"].as_i64().unwrap() > num);
}

#[tokio::test]
async fn command_mode_runs_any_locally_built_image() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    // Make sure the base image exists, then build a different image from it.
    deploy_python(&server, "warmup", tar_gz(&[("main.py", DICE)]), "").await;
    let built = Command::new("sh")
        .arg("-c")
        .arg("printf 'FROM newt/python:3\\nLABEL newt.test=command-mode\\n' | docker build -q -t newt-test/stdin-python:1 -")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let response = http()
        .post(server.url("/registerRuntime"))
        .json(&serde_json::json!({
            "name": "stdin-python", "image": "newt-test/stdin-python:1", "path": "/app",
            "dependencies": "pip3 install -r requirements.txt", "run": "python3 test.py"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let test_py = br#"
import json, sys
event = json.load(sys.stdin)
if event.get("fail"):
    print("told to fail", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"sum": sum(event["numbers"])}))
"#;
    // The same preload policy applies: the warm thing is the running container.
    let response =
        http()
            .put(server.url(
                "/v1/functions/adder?runtime=stdin-python&wait=true&preload=function&min_warm=1",
            ))
            .body(tar_gz(&[("test.py", test_py)]))
            .send()
            .await
            .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    // Wait for the container to be ready in the pool, not merely created.
    let before = loop {
        let (_, function) = get_json(&server, "/v1/functions/adder").await;
        if function["pool"]["idle"] == 1 {
            break function;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no container started ahead"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(containers_of(&server).len(), 1);

    let response = invoke(&server, "adder", r#"{"numbers":[1,2,3]}"#).await;
    assert_eq!(response.status(), 200);
    let (_, after) = get_json(&server, "/v1/functions/adder").await;
    assert_eq!(
        crate::support::header(&response, "x-newt-start"),
        "warm",
        "before {}\nafter {after}\n{}",
        before["pool"],
        server.log()
    );
    assert_eq!(response.json::<Value>().await.unwrap()["sum"], 6);
    let (status, _, message) = error_of(invoke(&server, "adder", r#"{"fail":true}"#).await).await;
    assert_eq!(status, 502);
    assert!(
        message.contains("exited with code 3") && message.contains("told to fail"),
        "{message}"
    );

    let missing = http()
        .post(server.url("/v1/runtimes"))
        .json(&serde_json::json!({"name": "ghost", "image": "newt-test/does-not-exist:1", "run": "x"}))
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(missing).await;
    assert_eq!(status, 422);
    assert!(message.contains("not on the Docker engine"), "{message}");
}

/// A tar whose single entry has a raw name the tar crate would refuse to write.
fn raw_tar(name: &[u8], kind: u8, link: &[u8], body: &[u8]) -> Vec<u8> {
    let mut header = tar_header(name, kind, link, body.len());
    let mut out = Vec::new();
    out.append(&mut header);
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn tar_header(name: &[u8], kind: u8, link: &[u8], size: usize) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

#[tokio::test]
async fn hostile_archives_are_refused_with_the_entry_named() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            raw_tar(b"/tmp/newt-evil-abs.py", b'0', b"", b"x"),
            "newt-evil-abs",
        ),
        (
            "dotdot",
            raw_tar(b"../../newt-evil-up.py", b'0', b"", b"x"),
            "newt-evil-up",
        ),
        (
            "symlink",
            raw_tar(b"main.py", b'2', b"/etc/passwd", b""),
            "main.py",
        ),
        ("device", raw_tar(b"dev-null", b'3', b"", b""), "dev-null"),
        ("not an archive", b"print('hi')".to_vec(), "tar"),
    ];
    for (what, bundle, named) in cases {
        let response = http()
            .put(server.url("/v1/functions/evil?runtime=python"))
            .body(bundle)
            .send()
            .await
            .unwrap();
        let (status, code, message) = error_of(response).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "invalid_bundle"),
            "{what}: {message}"
        );
        assert!(message.contains(named), "{what}: {message}");
    }
    assert!(!std::path::Path::new("/tmp/newt-evil-abs.py").exists());
    assert!(!server.home.join("../newt-evil-up.py").exists());
    let (status, _) = get_json(&server, "/v1/functions/evil").await;
    assert_eq!(status, 404, "a refused bundle never becomes a function");
}

#[tokio::test]
async fn restart_removes_old_containers_and_keeps_runtimes_and_functions() {
    if !docker_available() {
        return;
    }
    let mut server = Server::start();
    let home = server.keep_home().unwrap();
    deploy_python(&server, "dice", tar_gz(&[("main.py", DICE)]), "").await;
    let response = http()
        .post(server.url("/v1/runtimes"))
        .json(
            &serde_json::json!({"name": "cmd", "image": "newt/python:3", "run": "python3 main.py"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        invoke(&server, "dice", r#"{"roll":"2d6"}"#).await.status(),
        200
    );
    let before = containers_of(&server);
    assert_eq!(before.len(), 1);

    server.kill9();
    assert_eq!(containers_of(&Server::start_in(home.path(), &[])).len(), 0);
    let server = Server::start_in(home.path(), &[]);
    let (_, runtimes) = get_json(&server, "/v1/runtimes").await;
    assert!(
        runtimes["runtimes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "cmd")
    );
    let (_, function) = get_json(&server, "/v1/functions/dice").await;
    assert_eq!(function["status"], "ready");
    let response = invoke(&server, "dice", r#"{"roll":"2d6"}"#).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn without_an_engine_wasm_works_and_containers_answer_503() {
    let socket = "unix:///tmp/newt-no-such-docker.sock";
    let server = Server::start_with_env(&[], &[("DOCKER_HOST", socket)]);
    let (_, health) = get_json(&server, "/healthz").await;
    assert_eq!(health["docker"]["reachable"], false, "{health}");

    deploy(&server, "echo", fixture!("echo"), "").await;
    assert_eq!(invoke(&server, "echo", "still works").await.status(), 200);

    let response = http()
        .put(server.url("/v1/functions/dice?runtime=python"))
        .body(tar_gz(&[("main.py", DICE)]))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(
        message.contains(&format!("Docker engine not reachable at {socket}")),
        "{message}"
    );
}
