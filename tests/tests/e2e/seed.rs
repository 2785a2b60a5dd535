//! The seed platform's API, its curl sequence run verbatim; its shapes and errors;
//! command-mode runtimes; hostile archives; restarts and a missing engine, for
//! container functions.

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

/// The seed platform's own curl sequence, line for line as its document prints it
/// (`$BASE` standing for its server's address). Nothing newt-specific belongs here:
/// no field, header or option the seed does not have.
const SEED_SEQUENCE: &[&str] = &[
    r#"curl -X POST -H 'Content-Type: application/json' -d '{"image":"pythonruntime","path":"/ws","dependencies":"pip3 install -r requirements.txt","run":"python3 test.py"}' $BASE/registerRuntime"#,
    "curl $BASE/runtimes",
    "curl -F module=@dice.tar.gz $BASE/registerFunction/pythonruntime/dice",
    "curl $BASE/functions",
    r#"curl -X POST -H 'Content-Type: application/json' -d '{"funcName":"dice","params":{"roll":"4d6"}}' $BASE/invokeFunction"#,
    "curl $BASE/call/1",
    "curl $BASE/calls",
];

/// The seed's dice function: `python3 test.py` gets the params on stdin and prints
/// the roll. It takes a second, so the sequence's `GET /call/1`, sent right after the
/// invoke's answer, finds it still `PENDING`: the invoke did not wait for it.
const DICE_TEST_PY: &[u8] = br#"
import json, random, sys, time
count, sides = json.load(sys.stdin)["roll"].split("d")
time.sleep(1)
print(" ".join(str(random.randint(1, int(sides))) for _ in range(int(count))))
"#;

/// The image the seed's runtime object names, made from newt's Python base image
/// (there is no registry to pull it from); untagged again when dropped.
struct SeedImage;

impl SeedImage {
    const NAME: &str = "pythonruntime";

    async fn tag() -> SeedImage {
        // Registering a runtime of `newt/python:3` on a throwaway server builds the
        // base image if it is missing (under the build's file lock).
        let base = Server::start();
        let response = http()
            .post(base.url("/v1/runtimes"))
            .json(&serde_json::json!({"name": "base", "image": "newt/python:3", "run": "python3"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let tagged = Command::new("docker")
            .args(["tag", "newt/python:3", Self::NAME])
            .output()
            .unwrap();
        assert!(
            tagged.status.success(),
            "{}",
            String::from_utf8_lossy(&tagged.stderr)
        );
        SeedImage
    }
}

impl Drop for SeedImage {
    fn drop(&mut self) {
        // Only the tag goes: `newt/python:3` still names the image.
        let _ = Command::new("docker").args(["rmi", Self::NAME]).output();
    }
}

/// Whether a seed call result holds `n` dice rolls, each from 1 to 6.
fn holds_rolls(result: &Value, n: usize) -> bool {
    let Some(text) = result.as_str() else {
        return false;
    };
    let rolls: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    rolls.len() == n && rolls.iter().all(|r| (1..=6).contains(r))
}

#[tokio::test]
async fn the_seed_curl_sequence_works_unchanged() {
    if !docker_available() {
        return;
    }
    let _image = SeedImage::tag().await;
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.py"), DICE_TEST_PY).unwrap();
    sh(&server, dir.path(), "tar czf dice.tar.gz test.py");

    let answers: Vec<Value> = SEED_SEQUENCE
        .iter()
        .map(|line| json(&sh(&server, dir.path(), line)))
        .collect();
    let [runtime, runtimes, function, functions, invoked, call, calls] = &answers[..] else {
        unreachable!("seven lines");
    };
    let log = server.log();
    // The image names the runtime.
    assert_eq!(runtime["name"], "pythonruntime", "{runtime}\n{log}");
    assert_eq!(runtime["path"], "/ws", "{runtime}");
    // Lists of names.
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap_or_else(|| panic!("not an array: {list}"))
            .iter()
            .map(|n| {
                n.as_str()
                    .unwrap_or_else(|| panic!("not a name: {n}"))
                    .to_string()
            })
            .collect()
    };
    assert!(
        names(runtimes).contains(&"pythonruntime".to_string()),
        "{runtimes}"
    );
    assert_eq!(function["status"], "ready", "{function}\n{log}");
    assert_eq!(names(functions), ["dice"]);
    // The invoke answers with the call number before the call has run.
    assert_eq!(invoked, &serde_json::json!({"callNum": 1}));
    assert_eq!(
        call,
        &serde_json::json!({"funcName": "dice", "params": {"roll": "4d6"}, "callNum": 1,
            "status": "PENDING", "result": ""}),
    );
    let listed = calls.as_object().unwrap_or_else(|| panic!("{calls}"));
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["c1"], "{calls}");
    assert_eq!(listed["c1"]["callNum"], 1);
    assert_eq!(listed["c1"]["funcName"], "dice");

    // newt's documented way to wait for a seed call: `?wait=SECONDS`.
    let done = json(&sh(&server, dir.path(), "curl -s \"$BASE/call/1?wait=60\""));
    assert_eq!(done["status"], "DONE", "{done}\n{}", server.log());
    assert!(holds_rolls(&done["result"], 4), "{done}");
    assert_eq!(done["params"]["roll"], "4d6");
    // The seed's own lines now show it done.
    assert_eq!(json(&sh(&server, dir.path(), SEED_SEQUENCE[5])), done);
    let calls = json(&sh(&server, dir.path(), SEED_SEQUENCE[6]));
    assert_eq!(calls["c1"], done, "{calls}");

    // The answer is a 202 that says where the call is; call numbers increase.
    let response = http()
        .post(server.url("/invokeFunction"))
        .json(&serde_json::json!({"funcName": "dice", "params": {"roll": "2d6"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(crate::support::header(&response, "location"), "/call/2");
    assert_eq!(response.json::<Value>().await.unwrap()["callNum"], 2);
    let (_, second) = get_json(&server, "/call/2?wait=60").await;
    assert_eq!(second["status"], "DONE", "{second}");
    assert!(holds_rolls(&second["result"], 2), "{second}");
    let (_, calls) = get_json(&server, "/calls").await;
    let keys: Vec<&String> = calls.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["c1", "c2"], "{calls}");
}

#[tokio::test]
async fn seed_calls_go_pending_then_done_or_error_and_v1_keeps_its_answers() {
    let server = Server::start();
    deploy(&server, "nap3", fixture!("nap3"), "").await;
    deploy(&server, "echo", fixture!("echo"), "").await;
    deploy(&server, "fail", fixture!("fail"), "").await;
    deploy(&server, "sleeper", fixture!("sleep"), "?timeout_ms=300").await;
    let seed_invoke = async |name: &str, params: Value| -> i64 {
        let response = http()
            .post(server.url("/invokeFunction"))
            .json(&serde_json::json!({"funcName": name, "params": params}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{name}");
        response.json::<Value>().await.unwrap()["callNum"]
            .as_i64()
            .unwrap()
    };

    // A call of 3 s is answered at once and seen PENDING, then DONE.
    let nap = seed_invoke("nap3", serde_json::json!({})).await;
    let (status, pending) = get_json(&server, &format!("/call/{nap}")).await;
    assert_eq!(status, 200);
    assert_eq!(pending["status"], "PENDING", "{pending}");
    assert_eq!(pending["result"], "");
    let (_, done) = get_json(&server, &format!("/call/{nap}?wait=60")).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"], "", "nap3 prints nothing");

    // Output is a string, whatever it holds.
    let echo = seed_invoke("echo", serde_json::json!({"a": [1, 2]})).await;
    let (_, echoed) = get_json(&server, &format!("/call/{echo}?wait=60")).await;
    assert_eq!(echoed["status"], "DONE", "{echoed}");
    assert_eq!(echoed["result"], r#"{"a":[1,2]}"#);
    assert_eq!(echoed["params"]["a"][1], 2);

    // A failure and a timeout are ERROR, the result says why (`fail` writes "something
    // broke" to stderr and exits 3).
    let fail = seed_invoke("fail", Value::Null).await;
    let (_, failed) = get_json(&server, &format!("/call/{fail}?wait=60")).await;
    assert_eq!(failed["status"], "ERROR", "{failed}");
    assert!(
        failed["result"]
            .as_str()
            .unwrap()
            .contains("something broke"),
        "{failed}"
    );
    let sleeper = seed_invoke("sleeper", Value::Null).await;
    let (_, timed_out) = get_json(&server, &format!("/call/{sleeper}?wait=60")).await;
    assert_eq!(timed_out["status"], "ERROR", "{timed_out}");
    assert!(
        !timed_out["result"].as_str().unwrap().is_empty(),
        "{timed_out}"
    );

    // A wait ends at its deadline with the call as it is.
    let nap = seed_invoke("nap3", serde_json::json!({})).await;
    let (status, still) = get_json(&server, &format!("/call/{nap}?wait=1")).await;
    assert_eq!((status, still["status"].as_str()), (200, Some("PENDING")));

    // newt's richer answers stay on /v1.
    let (_, v1) = get_json(&server, &format!("/v1/calls/{echo}")).await;
    assert_eq!(v1["status"], "done", "{v1}");
    assert_eq!(v1["output"]["a"][0], 1, "{v1}");
    assert!(v1["id"].is_string(), "{v1}");
    let (_, v1) = get_json(&server, "/v1/runtimes").await;
    assert!(v1["runtimes"][0]["name"].is_string(), "{v1}");
    let (_, names) = get_json(&server, "/functions").await;
    let mut names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["echo", "fail", "nap3", "sleeper"]);
    let (_, runtimes) = get_json(&server, "/runtimes").await;
    assert!(
        runtimes.as_array().unwrap().contains(&Value::from("wasm")),
        "{runtimes}"
    );
}

#[tokio::test]
async fn the_seed_routes_answer_errors_with_status_and_what_to_fix() {
    let server = Server::start_with_args(&["--max-input-bytes", "1000"]);
    deploy(&server, "echo", fixture!("echo"), "").await;
    let post = async |path: &str, body: Value| {
        error_of(
            http()
                .post(server.url(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    };

    let (status, code, message) = post(
        "/invokeFunction",
        serde_json::json!({"params": {"roll": "4d6"}}),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
    assert!(message.contains("funcName"), "{message}");
    let (status, _, message) =
        post("/invokeFunction", serde_json::json!({"funcName": "dice"})).await;
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("dice"), "{message}");
    let (status, _, message) = post(
        "/invokeFunction",
        serde_json::json!({"funcName": "echo", "params": "x".repeat(2000)}),
    )
    .await;
    assert_eq!(status, 413, "{message}");

    let (status, _, message) = post(
        "/registerRuntime",
        serde_json::json!({"path": "/ws", "run": "python3 test.py"}),
    )
    .await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("image"), "{message}");
    let (status, _, message) = post(
        "/registerRuntime",
        serde_json::json!({"image": "pythonruntime", "path": "/ws", "run": "python3 test.py",
            "entrypoint": "x"}),
    )
    .await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("entrypoint"), "{message}");

    for (path, want) in [
        ("/call/999", 404),
        ("/call/one", 400),
        ("/call/1?wait=3600", 400),
        ("/call/1?timeout=3", 400),
    ] {
        let (status, body) = get_json(&server, path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    // No call was recorded by any of these.
    let (_, calls) = get_json(&server, "/calls").await;
    assert_eq!(calls, serde_json::json!({}));

    // A runtime whose image is not on the engine is refused when it is registered.
    if docker_available() {
        let (status, _, message) = post(
            "/registerRuntime",
            serde_json::json!({"image": "newt-test/seed-no-such-image", "path": "/ws",
                "dependencies": "pip3 install -r requirements.txt", "run": "python3 test.py"}),
        )
        .await;
        assert_eq!(status, 422, "{message}");
        assert!(
            message.contains("image newt-test/seed-no-such-image is not on the Docker engine")
                && message.contains("build or load it first"),
            "{message}"
        );
        let (_, runtimes) = get_json(&server, "/runtimes").await;
        assert!(
            !runtimes
                .as_array()
                .unwrap()
                .contains(&Value::from("seed-no-such-image")),
            "{runtimes}"
        );
    }
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
