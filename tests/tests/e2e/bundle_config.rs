//! A bundle's `newt.toml` (build steps, `[env]`, the Python it needs) and a runtime's
//! `env` and read-only `mounts`, on the real binary and the real Docker engine.

use crate::support::{error_of, get_json, http};
use newt_tests::{Server, docker_available, tar_gz};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// A word no earlier run used, so a bundle (and so its image's tag) is new each run
/// and its build really runs.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A python bundle: `main.py` (with a nonce in a comment) and a `newt.toml`.
fn bundle(main_py: &str, newt_toml: &str) -> Vec<u8> {
    let main = format!("# {}\n{main_py}", nonce());
    tar_gz(&[
        ("main.py", main.as_bytes()),
        ("newt.toml", newt_toml.as_bytes()),
    ])
}

/// Deploys `bundle` on `runtime`, waiting for its build, with the function's own
/// variables `env`; returns the status and the body.
async fn deploy_waiting(
    server: &Server,
    name: &str,
    runtime: &str,
    env: &Value,
    bundle: Vec<u8>,
) -> (u16, Value) {
    let response = http()
        .put(server.url(&format!("/v1/functions/{name}?runtime={runtime}&wait=true")))
        .header("x-newt-env", env.to_string())
        .body(bundle)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Invokes `name` with `{}` and returns its JSON output, asserting success.
async fn call(server: &Server, name: &str) -> Value {
    let response = crate::support::invoke(server, name, "{}").await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", server.log());
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Registers a runtime, returning the status and the body.
async fn register(server: &Server, runtime: &Value) -> (u16, Value) {
    let response = http()
        .post(server.url("/v1/runtimes"))
        .json(runtime)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A runtime of the built-in image in agent mode, with `env` and `mounts`.
fn runtime_object(name: &str, env: Value, mounts: Value) -> Value {
    json!({
        "name": name,
        "image": "newt/python:3",
        "run": "python3 /opt/newt/agent.py",
        "mode": "agent",
        "env": env,
        "mounts": mounts,
    })
}

#[tokio::test]
async fn newt_toml_build_steps_and_env_reach_the_handler() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let main_py = r#"
import os
def handler(event):
    with open(".deps/built.txt") as f:
        built = f.read().strip()
    return {"built": built, "greeting": os.environ.get("GREETING"),
            "shared": os.environ.get("SHARED")}
"#;
    let toml = r#"
python = "3.11"
build = ["echo built-by-step-as-$(id -u) > .deps/built.txt"]

[env]
GREETING = "from-newt-toml"
SHARED = "from-newt-toml"
"#;
    let (status, body) = deploy_waiting(
        &server,
        "configured",
        "python",
        &json!({"SHARED": "from-env-set"}),
        bundle(main_py, toml),
    )
    .await;
    assert_eq!(status, 201, "{body}\n{}", server.log());
    let output = call(&server, "configured").await;
    // The step ran at build time as the function's user; the bundle's variable is
    // there; the function's own wins over the bundle's.
    assert_eq!(output["built"], "built-by-step-as-10001", "{output}");
    assert_eq!(output["greeting"], "from-newt-toml", "{output}");
    assert_eq!(output["shared"], "from-env-set", "{output}");
}

#[tokio::test]
async fn a_bad_newt_toml_is_refused_before_anything_is_stored() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let main_py = "def handler(event):\n    return event\n";
    for (toml, expected) in [
        ("pyhton = \"3.11\"\n", "unknown field `pyhton`"),
        ("[env]\nNEWT_FUNCTION = \"x\"\n", "reserved"),
        ("build = [\"true\\nUSER root\"]\n", "one line"),
        ("python = \"3.99\"\n", "provides Python 3.11"),
    ] {
        let response = http()
            .put(server.url("/v1/functions/refused?runtime=python"))
            .body(bundle(main_py, toml))
            .send()
            .await
            .unwrap();
        let (status, code, message) = error_of(response).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "invalid_bundle"),
            "{toml}: {message}"
        );
        assert!(message.contains(expected), "{toml}: {message}");
        assert!(message.contains("newt.toml"), "{message}");
    }
    let (status, _) = get_json(&server, "/v1/functions/refused").await;
    assert_eq!(status, 404, "a refused bundle made no version");
}

#[tokio::test]
async fn a_slow_build_shows_its_step_and_growing_log_while_pending() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let toml = r#"build = ["echo first-marker", "sleep 3", "echo second-marker", "sleep 3"]"#;
    let response = http()
        .put(server.url("/v1/functions/slow-build?runtime=python"))
        .body(bundle("def handler(event):\n    return event\n", toml))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    // Watched until ready: each `build` seen while pending is kept.
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let function = loop {
        let (status, function) = get_json(&server, "/v1/functions/slow-build").await;
        assert_eq!(status, 200, "{function}");
        if function["status"] != "pending" {
            break function;
        }
        if let Some(build) = function.get("build") {
            seen.push(build.clone());
        }
        assert!(Instant::now() < deadline, "still pending\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_eq!(function["status"], "ready", "{function}");
    assert!(function.get("build").is_none(), "{function}");

    let tail = |b: &Value| b["log_tail"].as_str().unwrap_or_default().to_string();
    let step = |b: &Value| b["step"].as_str().unwrap_or_default().to_string();
    // A step's output is a line of its own (the step's `Step 6/10 : RUN echo ...`
    // line names it too).
    let printed = |b: &Value, word: &str| tail(b).lines().any(|line| line.trim() == word);
    let during_first_sleep = seen
        .iter()
        .position(|b| step(b).starts_with("build step 2/4: sleep 3"))
        .unwrap_or_else(|| panic!("the first sleep was not seen: {seen:#?}"));
    let first = &seen[during_first_sleep];
    assert!(printed(first, "first-marker"), "{first}");
    assert!(!printed(first, "second-marker"), "{first}");
    assert!(first["started_at"].as_i64().unwrap() > 0, "{first}");
    let later = seen[during_first_sleep..]
        .iter()
        .find(|b| step(b).starts_with("build step 4/4: sleep 3"))
        .unwrap_or_else(|| panic!("the second sleep was not seen: {seen:#?}"));
    assert!(printed(later, "second-marker"), "{later}");
    assert!(tail(later).len() > tail(first).len(), "{later}");
    assert!(
        seen.iter()
            .all(|b| tail(b).len() <= 4096 && !tail(b).contains('\u{1b}')),
        "{seen:#?}"
    );
}

/// A directory (and its file) the function's user can read, as an operator would
/// prepare what functions mount.
fn readable_dir(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn a_runtime_gives_its_env_and_an_allowed_read_only_mount() {
    if !docker_available() {
        return;
    }
    let allowed = tempfile::tempdir().unwrap();
    readable_dir(allowed.path());
    let models = allowed.path().join("models");
    std::fs::create_dir(&models).unwrap();
    readable_dir(&models);
    // Writable by anyone on the host: only the read-only mount keeps the function's
    // user from changing it.
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(models.join("weights.txt"), "the-weights").unwrap();
    std::fs::set_permissions(
        models.join("weights.txt"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let mut server = Server::start_with_args(&["--allow-mount", allowed.path().to_str().unwrap()]);
    let home = server.keep_home().unwrap();

    let runtime = runtime_object(
        "pymodels",
        json!({"FROM_RUNTIME": "runtime-value", "SHARED": "from-runtime"}),
        json!([{"host": models.to_str().unwrap(), "container": "/models"}]),
    );
    let (status, body) = register(&server, &runtime).await;
    assert_eq!(status, 201, "{body}\n{}", server.log());
    assert_eq!(body["env"]["FROM_RUNTIME"], "runtime-value", "{body}");
    assert_eq!(body["mounts"][0]["container"], "/models", "{body}");

    let main_py = r#"
import os
def handler(event):
    with open("/models/weights.txt") as f:
        weights = f.read()
    try:
        with open("/models/weights.txt", "a") as f:
            f.write("changed")
        write = "written"
    except OSError as e:
        write = str(e)
    try:
        open("/models/new.txt", "w").close()
        create = "created"
    except OSError as e:
        create = str(e)
    return {"weights": weights, "write": write, "create": create,
            "from_runtime": os.environ.get("FROM_RUNTIME"),
            "shared": os.environ.get("SHARED")}
"#;
    let (status, body) = deploy_waiting(
        &server,
        "reads-models",
        "pymodels",
        &json!({"SHARED": "from-function"}),
        bundle(main_py, ""),
    )
    .await;
    assert_eq!(status, 201, "{body}\n{}", server.log());
    let output = call(&server, "reads-models").await;
    assert_eq!(output["weights"], "the-weights", "{output}");
    for what in ["write", "create"] {
        assert!(
            output[what]
                .as_str()
                .unwrap()
                .contains("Read-only file system"),
            "{output}"
        );
    }
    assert_eq!(output["from_runtime"], "runtime-value", "{output}");
    assert_eq!(output["shared"], "from-function", "{output}");
    assert_eq!(
        std::fs::read_to_string(models.join("weights.txt")).unwrap(),
        "the-weights"
    );
    assert!(!models.join("new.txt").exists());

    // Restarted without --allow-mount: the stored runtime is kept, but its containers
    // are refused, with the reason, rather than mounting what is no longer allowed.
    server.terminate();
    let server = Server::start_in(home.path(), &[]);
    let (status, body) = get_json(&server, "/v1/runtimes/pymodels").await;
    assert_eq!(status, 200, "{body}");
    let response = crate::support::invoke(&server, "reads-models", "{}").await;
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"), "{message}");
    assert!(
        message.contains("runtime `pymodels` cannot start containers")
            && message.contains("--allow-mount"),
        "{message}"
    );
}

#[tokio::test]
async fn mounts_outside_the_allowed_directories_are_refused() {
    // Refused before the engine is asked anything: no Docker needed.
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("allowed");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(allowed.join("inside")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
    let server = Server::start_with_args(&["--allow-mount", allowed.to_str().unwrap()]);
    let canonical_allowed = allowed.canonicalize().unwrap();

    for (host, container, expected) in [
        (
            outside.clone(),
            "/data",
            "not under a directory the operator allowed",
        ),
        (allowed.join("escape"), "/data", "resolves to"),
        (
            allowed.join("inside/../../outside"),
            "/data",
            "absolute, without `.` or `..`",
        ),
        (allowed.join("inside"), "/tmp/data", "overlaps /tmp"),
        (allowed.join("inside"), "/app/data", "overlaps /app"),
        (allowed.join("inside"), "/", "root"),
    ] {
        let runtime = runtime_object(
            "mounting",
            json!({}),
            json!([{"host": host.to_str().unwrap(), "container": container}]),
        );
        let (status, body) = register(&server, &runtime).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 422, "{host:?} -> {container}: {body}");
        assert!(
            message.contains(expected),
            "{host:?} -> {container}: {message}"
        );
        if expected.contains("allowed") || expected == "resolves to" {
            assert!(
                message.contains(canonical_allowed.to_str().unwrap()),
                "the allowed directories are named: {message}"
            );
        }
    }
    let (status, _) = get_json(&server, "/v1/runtimes/mounting").await;
    assert_eq!(status, 404, "nothing was registered");

    // A server allowing nothing says how to allow a directory.
    let strict = Server::start();
    let runtime = runtime_object(
        "mounting",
        json!({}),
        json!([{"host": allowed.join("inside").to_str().unwrap(), "container": "/data"}]),
    );
    let (status, body) = register(&strict, &runtime).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-mount"),
        "{body}"
    );
}

#[tokio::test]
async fn a_prewarmed_call_gets_the_bundles_env_under_the_functions_own() {
    if !docker_available() {
        return;
    }
    // A bundle with only `[env]` (no steps, no requirements) may be loaded into a
    // runtime-level container: its variables travel with its code at `init`.
    let server = Server::start();
    crate::pools_python::prewarm_python(&server).await;
    let main_py = r#"
import os
def handler(event):
    return {"greeting": os.environ.get("GREETING"), "shared": os.environ.get("SHARED")}
"#;
    let toml = "[env]\nGREETING = \"from-newt-toml\"\nSHARED = \"from-newt-toml\"\n";
    let (status, body) = deploy_waiting(
        &server,
        "prewarmed-env",
        "python",
        &json!({"SHARED": "from-env-set"}),
        bundle(main_py, toml),
    )
    .await;
    assert!(status == 201 || status == 202, "{body}\n{}", server.log());
    let response = crate::support::invoke(&server, "prewarmed-env", "{}").await;
    assert_eq!(response.status(), 200, "{}", server.log());
    assert_eq!(
        crate::support::header(&response, "x-newt-start"),
        "prewarmed",
        "{}",
        server.log()
    );
    let output: Value = response.json().await.unwrap();
    assert_eq!(output["greeting"], "from-newt-toml", "{output}");
    assert_eq!(output["shared"], "from-env-set", "{output}");
}
