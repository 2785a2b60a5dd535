//! Versions, aliases and rollbacks end to end: calls of `FN@N` and `FN:alias` run
//! the version they name (their records say so), a weighted alias splits calls by its
//! weights, and a rollback serves the previous version at once and after a restart.
//!
//! Version 1 of each function is `echo` (its output is its input) and version 2 is
//! `env` (its output is its environment, `NEWT_FUNCTION=...` first), so an answer
//! tells which version ran.

use crate::cli::{newt, stdout_of};
use crate::support::{deploy, error_of, get_json, header, http, invoke};
use newt_tests::{Server, fixture};
use serde_json::{Value, json};

/// Deploys `echo` then `env` as versions 1 and 2 of `name`.
async fn two_versions(server: &Server, name: &str, query: &str) {
    let v1 = deploy(server, name, fixture!("echo"), query).await;
    assert_eq!(v1["version"], 1);
    let v2 = deploy(server, name, fixture!("env"), query).await;
    assert_eq!(v2["version"], 2);
}

/// Calls `name` (maybe `FN@N`, `FN:alias`) with `input`; returns the version that
/// answered (1 when the output is the input, 2 when it is an environment) and the
/// version its call record holds.
async fn call(server: &Server, name: &str, input: &str) -> (i64, i64) {
    let response = invoke(server, name, input).await;
    assert_eq!(response.status(), 200, "calling {name}");
    let id = header(&response, "x-newt-call-id");
    let output = response.text().await.unwrap();
    let answered = match output.as_str() {
        out if out == input => 1,
        out if out.contains("NEWT_FUNCTION=") => 2,
        other => panic!("{name} answered neither version's output: {other:?}"),
    };
    (answered, recorded_version(server, &id).await)
}

async fn recorded_version(server: &Server, id: &str) -> i64 {
    let (status, record) = get_json(server, &format!("/v1/calls/{id}")).await;
    assert_eq!(status, 200, "{record}");
    record["version"].as_i64().unwrap()
}

async fn put_alias(server: &Server, path: &str, body: Value) -> reqwest::Response {
    http()
        .put(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn roll_back(server: &Server, path: &str) -> reqwest::Response {
    http().post(server.url(path)).send().await.unwrap()
}

#[tokio::test]
async fn calls_of_a_version_or_an_alias_run_that_version() {
    let server = Server::start();
    two_versions(&server, "greet", "").await;

    // Plain calls run the newest; FN@1, ?version=1 and the URL-encoded form run v1.
    assert_eq!(call(&server, "greet", "hi").await, (2, 2));
    assert_eq!(call(&server, "greet@1", "hi").await, (1, 1));
    assert_eq!(call(&server, "greet%401", "hi").await, (1, 1));
    assert_eq!(call(&server, "greet@2", "hi").await, (2, 2));
    let response = http()
        .post(server.url("/v1/functions/greet/invoke?version=1"))
        .body("by query")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "by query");
    // On the function's HTTP route too (echo answers with the request envelope).
    let response = http()
        .get(server.url("/fn/greet@1/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("\"method\""), "{body}");

    // Calls of v1 ran on a pool of their own: the function's pool is still v2's.
    let (_, pools) = get_json(&server, "/v1/pools").await;
    let pool = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["function"] == "greet")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(pool["version"], 2, "{pools}");

    // An alias of one version.
    let response = put_alias(
        &server,
        "/v1/functions/greet/aliases/prod",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(call(&server, "greet:prod", "hi").await, (1, 1));
    assert_eq!(call(&server, "greet%3Aprod", "hi").await, (1, 1));
    let response = http()
        .post(server.url("/v1/functions/greet/invoke?alias=prod"))
        .body("by alias")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "by alias");

    // The version list says which serves and where aliases point.
    let (status, versions) = get_json(&server, "/v1/functions/greet/versions").await;
    assert_eq!(status, 200);
    assert_eq!(versions["serving"], 2);
    let listed: Vec<(i64, bool, Value)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["serving"] == true,
                v["aliases"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(2, true, json!([])), (1, false, json!(["prod"]))],
        "{versions}"
    );
    assert_eq!(versions["versions"][1]["status"], "ready");
    assert_eq!(
        versions["versions"][1]["digest"].as_str().unwrap().len(),
        64
    );

    // A 50/50 split: each call picks a version; both run, about half each.
    let response = put_alias(
        &server,
        "/v1/functions/greet/aliases/prod",
        json!({"versions": {"1": 50, "2": 50}}),
    )
    .await;
    assert_eq!(response.status(), 200, "replacing an alias");
    let mut counts = [0usize; 2];
    for i in 0..200 {
        let (answered, recorded) = call(&server, "greet:prod", &format!("call {i}")).await;
        assert_eq!(answered, recorded, "the record keeps the version that ran");
        counts[answered as usize - 1] += 1;
    }
    // 200 fair coin flips: 60..=140 each is more than five standard deviations wide.
    assert!(
        (60..=140).contains(&counts[0]) && (60..=140).contains(&counts[1]),
        "a 50/50 split gave {counts:?}"
    );

    // Async calls of a version keep it.
    let response = http()
        .post(server.url("/v1/functions/greet@1/invoke?async=true"))
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = header(&response, "x-newt-call-id");
    let record = crate::support::wait_for_call(&server, &id, 30).await;
    assert_eq!(
        (record["version"].clone(), record["output"].clone()),
        (json!(1), json!("later"))
    );
}

#[tokio::test]
async fn versions_and_aliases_that_cannot_run_are_refused_with_a_reason() {
    let server = Server::start();
    two_versions(&server, "greet", "").await;
    let cases: [(&str, Value, u16, &str); 6] = [
        ("prod", json!({"version": 9}), 404, "no version 9"),
        (
            "prod",
            json!({"versions": {"1": 50, "2": 40}}),
            400,
            "sum to 90",
        ),
        (
            "prod",
            json!({"versions": {"1": 100, "2": 0}}),
            400,
            "weight",
        ),
        ("12", json!({"version": 1}), 400, "not be a number"),
        ("Prod", json!({"version": 1}), 400, "invalid alias"),
        ("prod", json!({"version": "1"}), 400, "whole number"),
    ];
    for (alias, body, status, says) in cases {
        let path = format!("/v1/functions/greet/aliases/{alias}");
        let (got, _, message) = error_of(put_alias(&server, &path, body.clone()).await).await;
        assert_eq!(got, status, "{alias} {body}: {message}");
        assert!(message.contains(says), "{alias} {body}: {message}");
    }
    let response = put_alias(
        &server,
        "/v1/functions/nobody/aliases/prod",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(response.status(), 404);

    for (name, status, says) in [
        ("greet@9", 404, "no version 9"),
        ("greet@0", 400, "invalid version"),
        ("greet:prod", 404, "no alias `prod`"),
        ("greet:1", 400, "greet@1"),
        ("nobody@1", 404, "does not exist"),
    ] {
        let (got, _, message) = error_of(invoke(&server, name, "").await).await;
        assert_eq!(got, status, "{name}: {message}");
        assert!(message.contains(says), "{name}: {message}");
    }
    let response = http()
        .post(server.url("/v1/functions/greet@1/invoke?version=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Aliases go with their function.
    let response = put_alias(
        &server,
        "/v1/functions/greet/aliases/prod",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let response = http()
        .delete(server.url("/v1/functions/greet"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    deploy(&server, "greet", fixture!("echo"), "").await;
    let (_, aliases) = get_json(&server, "/v1/functions/greet/aliases").await;
    assert_eq!(aliases["aliases"], json!([]));
}

#[tokio::test]
async fn a_rollback_serves_the_previous_version_at_once_and_after_a_restart() {
    let mut server = Server::start();
    let home = server.keep_home().unwrap();
    // One warm instance: the version rolled back to gets its pool filled.
    two_versions(&server, "greet", "?min_warm=1").await;
    assert_eq!(call(&server, "greet", "hi").await, (2, 2));

    let response = roll_back(&server, "/v1/functions/greet/rollback").await;
    assert_eq!(response.status(), 200);
    let rolled: Value = response.json().await.unwrap();
    assert_eq!(
        (rolled["from"].clone(), rolled["to"].clone()),
        (json!(2), json!(1))
    );
    // The very next call runs version 1.
    assert_eq!(call(&server, "greet", "hi").await, (1, 1));
    let (_, versions) = get_json(&server, "/v1/functions/greet/versions").await;
    assert_eq!(versions["serving"], 1);
    assert_eq!(versions["versions"][0]["rolled_back"], true, "{versions}");
    // Its pool is the function's now, warm to min_warm; version 2's is gone.
    crate::support::eventually(10, "version 1's pool holds its warm instance", async || {
        let (_, pools) = get_json(&server, "/v1/pools").await;
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["function"] == "greet" && p["version"] == 1 && p["idle"].as_u64() >= Some(1))
    })
    .await;

    // Nothing earlier than version 1 is ready: 409.
    let (status, _, message) =
        error_of(roll_back(&server, "/v1/functions/greet/rollback").await).await;
    assert_eq!(status, 409);
    assert!(message.contains("oldest ready version"), "{message}");

    // A restart keeps serving version 1.
    server.terminate();
    drop(server);
    let mut server = Server::start_in(home.path(), &[]);
    assert_eq!(call(&server, "greet", "hi").await, (1, 1));

    // Rolling forward with --to; a new deploy after a rollback serves itself.
    let out = stdout_of(&newt(&server, &["rollback", "greet", "--to", "2"]));
    assert!(out.contains("version 2 serves now (was 1)"), "{out}");
    assert_eq!(call(&server, "greet", "hi").await, (2, 2));
    let response = roll_back(&server, "/v1/functions/greet/rollback?to=1").await;
    assert_eq!(response.status(), 200);
    // The same bundle as the set-aside version 2 is a new version, and it serves.
    let v3 = deploy(&server, "greet", fixture!("env"), "").await;
    assert_eq!(v3["version"], 3);
    assert_eq!(call(&server, "greet", "hi").await, (2, 3));
    server.terminate();
    drop(server);
    let server = Server::start_in(home.path(), &[]);
    assert_eq!(call(&server, "greet", "hi").await, (2, 3));
}

#[tokio::test]
async fn a_rollback_needs_an_earlier_ready_version() {
    let server = Server::start();
    deploy(&server, "solo", fixture!("echo"), "").await;
    let (status, code, message) =
        error_of(roll_back(&server, "/v1/functions/solo/rollback").await).await;
    assert_eq!((status, code.as_str()), (409, "conflict"), "{message}");
    assert!(message.contains("no earlier ready version"), "{message}");
    let (status, _, _) =
        error_of(roll_back(&server, "/v1/functions/solo/rollback?to=1").await).await;
    assert_eq!(status, 409, "version 1 already serves");
    let (status, _, _) =
        error_of(roll_back(&server, "/v1/functions/solo/rollback?to=7").await).await;
    assert_eq!(status, 404);
    let (status, _, _) = error_of(roll_back(&server, "/v1/functions/nobody/rollback").await).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_cli_lists_versions_sets_aliases_and_invokes_a_version() {
    let server = Server::start();
    two_versions(&server, "greet", "").await;
    let out = stdout_of(&newt(&server, &["alias", "set", "greet", "prod", "1"]));
    assert!(out.contains("greet:prod -> v1"), "{out}");
    let out = stdout_of(&newt(
        &server,
        &["alias", "set", "greet", "canary", "1=90", "2=10"],
    ));
    assert!(out.contains("v1 90%, v2 10%"), "{out}");
    let out = stdout_of(&newt(&server, &["alias", "list", "greet"]));
    assert!(out.contains("prod") && out.contains("canary"), "{out}");

    let out = stdout_of(&newt(&server, &["versions", "greet"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{out}");
    assert!(
        lines[1].starts_with('2') && lines[1].contains("serving"),
        "{out}"
    );
    assert!(
        lines[2].starts_with('1') && lines[2].contains("canary,prod"),
        "{out}"
    );

    let out = stdout_of(&newt(&server, &["invoke", "greet@1", "from the cli"]));
    assert_eq!(out.trim_end(), "from the cli");
    let out = stdout_of(&newt(&server, &["invoke", "greet:prod", "by alias"]));
    assert_eq!(out.trim_end(), "by alias");

    stdout_of(&newt(&server, &["alias", "rm", "greet", "canary"]));
    let (_, aliases) = get_json(&server, "/v1/functions/greet/aliases").await;
    assert_eq!(aliases["aliases"].as_array().unwrap().len(), 1);
    let failed = newt(&server, &["alias", "set", "greet", "prod", "1=60", "2=30"]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("sum to 90"));
}
