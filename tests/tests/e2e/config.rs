//! Configuration and secrets: variables and secrets reach wasm and Python functions
//! (prewarmed ones too), a change takes effect on the next call, and a secret's value
//! shows up in no API answer, call record, database file or log.

use crate::containers::deploy_python;
use crate::pools_python::{generic_idle, prewarm_python};
use crate::support::{error_of, eventually, get_json, header, http, invoke, metrics_text};
use newt_tests::{Server, containers_of, docker_available, fixture, newt_bin, tar_gz};
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// A secret no test input or fixture holds by chance.
fn secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3cret-{nanos:x}-{}-value", std::process::id())
}

/// What the `env` fixture prints for a value: each byte one up.
fn shifted(value: &str) -> String {
    value.bytes().map(|b| (b + 1) as char).collect()
}

/// The `env` fixture's output as name -> shifted value.
async fn env_of(
    server: &Server,
    name: &str,
) -> (String, std::collections::BTreeMap<String, String>) {
    let response = invoke(server, name, "").await;
    assert_eq!(response.status(), 200, "{}", server.log());
    let start = header(&response, "x-newt-start");
    let text = response.text().await.unwrap();
    let env = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (start, env)
}

async fn patch(server: &Server, name: &str, body: Value) -> reqwest::Response {
    http()
        .patch(server.url(&format!("/v1/functions/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn patch_ok(server: &Server, name: &str, body: Value) -> Value {
    let response = patch(server, name, body).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", server.log());
    serde_json::from_str(&text).unwrap()
}

/// Everything the API shows about functions and calls, as one text.
async fn api_answers(server: &Server, name: &str) -> String {
    let mut all = String::new();
    let (_, calls) = get_json(server, &format!("/v1/calls?function={name}")).await;
    for call in calls["calls"].as_array().unwrap() {
        let id = call["id"].as_str().unwrap();
        all.push_str(
            &get_json(server, &format!("/v1/calls/{id}"))
                .await
                .1
                .to_string(),
        );
    }
    for path in [
        format!("/v1/functions/{name}"),
        "/v1/functions".to_string(),
        "/v1/pools".to_string(),
        "/calls".to_string(),
        "/functions".to_string(),
    ] {
        all.push_str(&get_json(server, &path).await.1.to_string());
    }
    all.push_str(&calls.to_string());
    all.push_str(&metrics_text(server).await);
    all
}

/// Asserts `secret` is in no API answer, no file under the server's home (the
/// database and its WAL included) and not in the server's log.
async fn assert_nowhere(server: &Server, name: &str, secret: &str) {
    let answers = api_answers(server, name).await;
    assert!(!answers.contains(secret), "an API answer holds the secret");
    assert!(
        !server.log().contains(secret),
        "the server log holds the secret"
    );
    let mut files = vec![server.home.clone()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            checked += 1;
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }
    let db = server.home.join("newt.db");
    assert!(db.exists() && checked > 1, "checked {checked} files");
}

#[tokio::test]
async fn wasm_gets_its_variables_and_secrets_and_changes_take_effect_next_call() {
    let server = Server::start();
    let token = secret();
    let response = http()
        .put(server.url("/v1/functions/env"))
        .header("x-newt-env", r#"{"GREETING":"hello"}"#)
        .body(fixture!("env").to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deployed: Value = response.json().await.unwrap();
    assert_eq!(deployed["env"], json!({"GREETING": "hello"}));

    let detail = patch_ok(&server, "env", json!({"secrets": {"API_TOKEN": token}})).await;
    assert_eq!(
        detail["version"], 2,
        "a configuration change is a new version"
    );
    assert_eq!(detail["secrets"], json!(["API_TOKEN"]));
    assert_eq!(detail["env"], json!({"GREETING": "hello"}));

    let (_, env) = env_of(&server, "env").await;
    assert_eq!(env["GREETING"], shifted("hello"));
    assert_eq!(env["API_TOKEN"], shifted(&token));
    assert_eq!(env["NEWT_FUNCTION"], shifted("env"));

    // A change is in force for the very next call; unset removes a name.
    patch_ok(&server, "env", json!({"env": {"GREETING": "bonjour"}})).await;
    let (_, env) = env_of(&server, "env").await;
    assert_eq!(env["GREETING"], shifted("bonjour"));
    assert_eq!(env["API_TOKEN"], shifted(&token));
    let detail = patch_ok(&server, "env", json!({"unset": ["GREETING"]})).await;
    assert_eq!(detail["version"], 4);
    let (_, env) = env_of(&server, "env").await;
    assert!(!env.contains_key("GREETING"), "{env:?}");

    // Setting what is already set changes nothing: no new version.
    let detail = patch_ok(&server, "env", json!({"secrets": {"API_TOKEN": token}})).await;
    assert_eq!(detail["version"], 4);

    // A redeploy of new code keeps the configuration.
    let response = http()
        .put(server.url("/v1/functions/env"))
        .body(fixture!("echo").to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let redeployed: Value = response.json().await.unwrap();
    assert_eq!(redeployed["secrets"], json!(["API_TOKEN"]));

    assert_nowhere(&server, "env", &token).await;
}

#[tokio::test]
async fn bad_names_values_and_allow_lists_are_refused_without_echoing_secrets() {
    let server = Server::start();
    crate::support::deploy(&server, "env", fixture!("env"), "").await;
    let token = secret();
    for (body, wanted) in [
        (json!({"env": {"NEWT_CALL_ID": "x"}}), "reserved"),
        (json!({"env": {"1ABC": "x"}}), "invalid variable name"),
        (
            json!({"env": {"BIG": "x".repeat(40 * 1024)}}),
            "the limit is 32768",
        ),
        (
            json!({"secrets": {"BAD-NAME": token}}),
            "invalid variable name",
        ),
        (json!({"secrets": {"K": 7}}), "`secrets` must be"),
        (json!({"env": {"K": "a"}, "secrets": {"K": token}}), "both"),
        (json!({"allow_outbound": ["no port"]}), "allow_outbound"),
        (
            json!({"colour": "red", "env": {}}),
            "unknown field `colour`",
        ),
    ] {
        let (status, code, message) = error_of(patch(&server, "env", body).await).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
        assert!(message.contains(wanted), "{message} (wanted {wanted})");
        assert!(!message.contains(&token), "an error echoes the secret");
    }
    let many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("V{i}"), json!("x"))).collect();
    let (status, _, message) = error_of(patch(&server, "env", json!({ "env": many })).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("at most 128"), "{message}");
    // Nothing refused made a version.
    let (_, function) = get_json(&server, "/v1/functions/env").await;
    assert_eq!(function["version"], 1);

    // allow_outbound is stored, shown, and replaced as a whole.
    let detail = patch_ok(
        &server,
        "env",
        json!({"allow_outbound": ["127.0.0.2:8080", "API.example.com:443"]}),
    )
    .await;
    assert_eq!(
        detail["allow_outbound"],
        json!(["127.0.0.2:8080", "api.example.com:443"])
    );
    let response = http()
        .put(server.url("/v1/functions/other?allow_outbound=127.0.0.3:80"))
        .body(fixture!("echo").to_vec())
        .send()
        .await
        .unwrap();
    let deployed: Value = response.json().await.unwrap();
    assert_eq!(deployed["allow_outbound"], json!(["127.0.0.3:80"]));
    let response = http()
        .put(server.url("/v1/functions/other?allow_outbound=nowhere"))
        .body(fixture!("echo").to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(!server.log().contains(&token));
}

#[tokio::test]
async fn secrets_survive_a_restart_in_the_key_file() {
    let mut server = Server::start();
    crate::support::deploy(&server, "env", fixture!("env"), "").await;
    let token = secret();
    patch_ok(&server, "env", json!({"secrets": {"API_TOKEN": token}})).await;
    let key = server.home.join("secret.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the key file is the server user's only"
    );

    let home = server.keep_home().unwrap();
    server.terminate();
    drop(server);
    let server = Server::start_in(home.path(), &[]);
    let (_, env) = env_of(&server, "env").await;
    assert_eq!(env["API_TOKEN"], shifted(&token));
    assert_nowhere(&server, "env", &token).await;
}

#[tokio::test]
async fn the_cli_sets_a_secret_from_stdin_and_never_shows_it() {
    let server = Server::start();
    crate::support::deploy(&server, "env", fixture!("env"), "").await;
    let token = secret();
    let newt = |args: &[&str]| {
        let mut command = Command::new(newt_bin());
        command
            .args(args)
            .env("NEWT_SERVER", &server.base)
            .env_remove("NEWT_TOKEN");
        command
    };
    let mut child = newt(&["secret", "set", "env", "API_TOKEN"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `echo` gives it: the trailing newline is not part of the value.
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = newt(&["env", "set", "env", "GREETING=hi there", "EMPTY="])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = newt(&["env", "list", "env"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("GREETING=hi there\n"), "{listed}");
    assert!(listed.contains("API_TOKEN (secret)"), "{listed}");
    assert!(!listed.contains(&token), "{listed}");

    // A value on the command line is refused before anything is sent.
    let out = newt(&["secret", "set", "env", &format!("OTHER={token}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read from stdin"));

    let (_, env) = env_of(&server, "env").await;
    assert_eq!(env["API_TOKEN"], shifted(&token));
    assert_eq!(env["GREETING"], shifted("hi there"));
    assert_eq!(env["EMPTY"], "");

    let out = newt(&["env", "unset", "env", "API_TOKEN"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, env) = env_of(&server, "env").await;
    assert!(!env.contains_key("API_TOKEN"));
    assert_nowhere(&server, "env", &token).await;
}

/// A Python handler that returns its variable and its secret reversed (so the call's
/// recorded output does not hold the secret itself).
const PYTHON: &str = r#"
import os

AT_IMPORT = os.environ.get("GREETING")

def handler(event):
    return {
        "greeting": os.environ.get("GREETING"),
        "at_import": AT_IMPORT,
        "token_reversed": os.environ.get("API_TOKEN", "")[::-1],
    }
"#;

fn reversed(value: &str) -> String {
    value.chars().rev().collect()
}

async fn call_python(server: &Server, name: &str) -> (String, Value) {
    let response = invoke(server, name, "{}").await;
    assert_eq!(response.status(), 200, "{}", server.log());
    let start = header(&response, "x-newt-start");
    (start, response.json().await.unwrap())
}

/// Whether any container of `server` was started with `text` in its environment.
fn in_container_env(server: &Server, text: &str) -> bool {
    containers_of(server).iter().any(|id| {
        let out = Command::new("docker")
            .args(["inspect", "--format", "{{json .Config.Env}}", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(text)
    })
}

#[tokio::test]
async fn python_gets_its_configuration_cold_warm_and_after_a_change() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let token = secret();
    let response = http()
        .put(server.url("/v1/functions/cfg?runtime=python&wait=true"))
        .header("x-newt-env", r#"{"GREETING":"hello"}"#)
        .header("x-newt-secrets", json!({"API_TOKEN": token}).to_string())
        .body(tar_gz(&[("main.py", PYTHON.as_bytes())]))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", server.log());
    let (start, out) = call_python(&server, "cfg").await;
    assert_eq!(start, "cold");
    assert_eq!(out["greeting"], "hello");
    assert_eq!(
        out["at_import"], "hello",
        "set before the handler's module is imported"
    );
    assert_eq!(out["token_reversed"], reversed(&token));
    assert_eq!(call_python(&server, "cfg").await.0, "warm");

    // The next call after a change runs in a container with the new value.
    patch_ok(&server, "cfg", json!({"env": {"GREETING": "bonjour"}})).await;
    let (_, out) = call_python(&server, "cfg").await;
    assert_eq!(out["greeting"], "bonjour");
    assert_eq!(out["token_reversed"], reversed(&token));

    // Delivered in `init`, not in the container's own environment.
    assert!(!in_container_env(&server, &token));
    assert_nowhere(&server, "cfg", &token).await;
}

#[tokio::test]
async fn a_prewarmed_python_call_gets_the_functions_configuration() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    prewarm_python(&server).await;

    let token = secret();
    deploy_python(
        &server,
        "pre",
        tar_gz(&[("main.py", PYTHON.as_bytes())]),
        "",
    )
    .await;
    patch_ok(
        &server,
        "pre",
        json!({"env": {"GREETING": "hello"}, "secrets": {"API_TOKEN": token}}),
    )
    .await;
    let (start, out) = call_python(&server, "pre").await;
    assert_eq!(start, "prewarmed", "{}", server.log());
    assert_eq!(out["greeting"], "hello");
    assert_eq!(out["at_import"], "hello");
    assert_eq!(out["token_reversed"], reversed(&token));

    // The refilled runtime-level container is generic again: it holds nothing of the
    // function's until one claims it.
    eventually(600, "the runtime-level pool refilled", async || {
        generic_idle(&server).await == 1
    })
    .await;
    assert!(!in_container_env(&server, &token));
    assert!(!in_container_env(&server, "GREETING"));
    assert_nowhere(&server, "pre", &token).await;
}
