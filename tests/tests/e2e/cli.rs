//! The CLI against a real server: the path a user takes from `newt new` to output.

use newt_tests::{Server, guest, newt_bin};
use std::process::{Command, Output};

/// Runs the `newt` CLI against `server` (no token).
pub(crate) fn newt(server: &Server, args: &[&str]) -> Output {
    Command::new(newt_bin())
        .args(args)
        .env("NEWT_SERVER", &server.base)
        .env_remove("NEWT_TOKEN")
        .output()
        .unwrap()
}

/// A CLI run's stdout; fails the test with its output when it failed.
pub(crate) fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "newt failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn deploy_invoke_and_inspect_from_the_cli() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("dice.wasm");
    std::fs::write(&wasm, guest("dice")).unwrap();

    let out = stdout_of(&newt(&server, &["deploy", "dice", wasm.to_str().unwrap()]));
    assert!(out.contains("deployed dice v1"), "{out}");

    let out = stdout_of(&newt(&server, &["invoke", "dice", r#"{"roll":"2d6"}"#]));
    let rolls: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rolls.as_array().unwrap().len(), 2);

    let failed = newt(&server, &["invoke", "dice", r#"{"roll":"0d0"}"#]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("0d0"));

    let out = stdout_of(&newt(&server, &["functions"]));
    assert!(out.lines().any(|l| l.starts_with("dice ")), "{out}");

    let out = stdout_of(&newt(&server, &["calls", "--json"]));
    let calls: serde_json::Value = serde_json::from_str(&out).unwrap();
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    let id = calls[1]["id"].as_str().unwrap();

    let out = stdout_of(&newt(&server, &["call", id]));
    assert!(out.contains("status    done"), "{out}");
    assert!(out.contains("start     cold"), "{out}");

    let async_id = stdout_of(&newt(
        &server,
        &["invoke", "--async", "dice", r#"{"roll":"1d6"}"#],
    ));
    assert_eq!(async_id.trim().len(), 36, "{async_id}");
}

#[tokio::test]
async fn new_build_deploy_invoke_a_fresh_rust_function() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().to_str().unwrap();
    stdout_of(&newt(
        &server,
        &["new", "greeter", "--lang", "rust", "--dir", parent],
    ));

    let crate_dir = dir.path().join("greeter");
    let build = newt(&server, &["build", crate_dir.to_str().unwrap()]);
    let out = stdout_of(&build);
    let wasm = out.lines().last().unwrap().trim().to_string();
    assert!(wasm.ends_with("greeter.wasm"), "{out}");

    stdout_of(&newt(&server, &["deploy", "greeter", &wasm]));
    let out = stdout_of(&newt(&server, &["invoke", "greeter", r#"{"name":"x"}"#]));
    assert!(out.contains('x'), "{out}");
}

#[tokio::test]
async fn python_function_and_runtimes_from_the_cli() {
    if !newt_tests::docker_available() {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("dice.tgz");
    std::fs::write(
        &bundle,
        newt_tests::tar_gz(&[("main.py", crate::containers::DICE)]),
    )
    .unwrap();
    let args = [
        "deploy",
        "dice-py",
        bundle.to_str().unwrap(),
        "--runtime",
        "python",
        "--wait",
    ];
    let out = stdout_of(&newt(&server, &args));
    assert!(out.contains("deployed dice-py v1"), "{out}");
    let out = stdout_of(&newt(&server, &["invoke", "dice-py", r#"{"roll":"3d6"}"#]));
    let rolls: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rolls.as_array().unwrap().len(), 3);
    let out = stdout_of(&newt(&server, &["runtimes"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("python ") && l.contains("agent")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("wasm ")), "{out}");
}
