//! The HTTP API with real functions: deploy, invoke (sync and async), records, errors.

use crate::support::{deploy, error_of, get_json, header, http, invoke, wait_for_call};
use newt_tests::{Server, fixture, guest};
use serde_json::Value;

fn assert_dice(output: &Value, count: usize) {
    let rolls = output
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {output}"));
    assert_eq!(rolls.len(), count, "{output}");
    for roll in rolls {
        let n = roll
            .as_u64()
            .unwrap_or_else(|| panic!("not a number: {roll}"));
        assert!((1..=6).contains(&n), "{n} is not a die face");
    }
}

#[tokio::test]
async fn dice_rolls_and_a_bad_roll_fails_with_its_message() {
    let server = Server::start();
    let deployed = deploy(&server, "dice", &guest("dice"), "").await;
    assert_eq!(deployed["version"], 1);
    assert_eq!(deployed["status"], "ready");

    let first = invoke(&server, "dice", r#"{"roll":"4d6"}"#).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-newt-start"), "cold");
    assert!(header(&first, "server-timing").contains("exec;dur="));
    let call_id = header(&first, "x-newt-call-id");
    assert_dice(&first.json().await.unwrap(), 4);

    let second = invoke(&server, "dice", r#"{"roll":"4d6"}"#).await;
    assert_eq!(header(&second, "x-newt-start"), "warm");
    assert_dice(&second.json().await.unwrap(), 4);

    // The record has the output, the guest's stderr, the start kind and timings.
    let (status, call) = get_json(&server, &format!("/v1/calls/{call_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(call["status"], "done");
    assert_eq!(call["start"], "cold");
    let (_, by_num) = get_json(&server, &format!("/v1/calls/{}", call["num"])).await;
    assert_eq!(by_num["id"], call_id.as_str());
    assert_eq!(call["input"]["roll"], "4d6");
    assert_dice(&call["output"], 4);
    assert!(call["logs"].as_str().unwrap().contains("4d6"), "{call}");
    assert!(call["timings"]["exec_ms"].as_f64().unwrap() > 0.0);

    let bad = invoke(&server, "dice", r#"{"roll":"banana"}"#).await;
    let bad_id = header(&bad, "x-newt-call-id");
    let (status, code, message) = error_of(bad).await;
    assert_eq!((status, code.as_str()), (502, "function_failed"));
    assert!(message.contains("banana"), "{message}");
    let (_, call) = get_json(&server, &format!("/v1/calls/{bad_id}")).await;
    assert_eq!(call["status"], "failed");
    assert!(call["error"].as_str().unwrap().contains("banana"));
}

#[tokio::test]
async fn bad_uploads_names_and_bodies_get_clear_errors() {
    let server =
        Server::start_with_args(&["--max-input-bytes", "1024", "--max-bundle-bytes", "200000"]);

    let response = http()
        .put(server.url("/v1/functions/shell"))
        .body("#!/bin/sh\nrm -rf /\n")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (422, "invalid_bundle"));
    assert!(message.contains("WebAssembly"), "{message}");

    // Right magic, broken module: the compiler's message comes back.
    let response = http()
        .put(server.url("/v1/functions/broken"))
        .body(b"\0asm\x01\0\0\0\x01\xff\xff".to_vec())
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, 422);
    assert!(message.contains("does not compile"), "{message}");

    let (status, code, _) = error_of(invoke(&server, "nope", "{}").await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let (status, _) = get_json(&server, "/v1/functions/nope").await;
    assert_eq!(status, 404);

    for bad in ["Bad_Name", "-x", &"a".repeat(64)] {
        let response = http()
            .put(server.url(&format!("/v1/functions/{bad}")))
            .body(fixture!("echo").to_vec())
            .send()
            .await
            .unwrap();
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{bad}");
        assert!(message.contains("a-z"), "{message}");
    }

    deploy(&server, "echo", fixture!("echo"), "").await;
    let (status, code, message) = error_of(invoke(&server, "echo", &"x".repeat(2048)).await).await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
    assert!(message.contains("1024"), "{message}");
    let response = http()
        .put(server.url("/v1/functions/huge"))
        .body(vec![0u8; 300_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    let (status, code, _) = error_of(
        http()
            .get(server.url("/v1/calls?status=exploded"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    let (status, _) = get_json(&server, "/v1/calls/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&server, "/v1/calls/01936b6e-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&server, "/v2/nothing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn async_call_is_accepted_then_fetched() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let response = http()
        .post(server.url("/v1/functions/echo/invoke?async=true"))
        .body(r#"{"later":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = header(&response, "x-newt-call-id");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["call_id"], id.as_str());
    let call = wait_for_call(&server, &id, 30).await;
    assert_eq!(call["status"], "done", "{call}");
    assert_eq!(call["output"]["later"], true);
    assert_eq!(call["async"], true);
}

#[tokio::test]
async fn functions_and_calls_are_listed_and_filtered() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    deploy(&server, "trap", fixture!("trap"), "").await;
    // Same bundle again: no new version.
    let again = deploy(&server, "echo", fixture!("echo"), "").await;
    assert_eq!(again["version"], 1);
    let v2 = deploy(&server, "echo", fixture!("echo"), "?timeout_ms=5000").await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["limits"]["timeout_ms"], 5000);

    for _ in 0..3 {
        assert_eq!(invoke(&server, "echo", "1").await.status(), 200);
    }
    assert_eq!(invoke(&server, "trap", "").await.status(), 502);

    let (_, list) = get_json(&server, "/v1/functions").await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "trap"]);
    let (_, echo) = get_json(&server, "/v1/functions/echo").await;
    assert_eq!(echo["versions"].as_array().unwrap().len(), 2);

    let (_, calls) = get_json(&server, "/v1/calls?function=echo").await;
    assert_eq!(calls["calls"].as_array().unwrap().len(), 3);
    let (_, failed) = get_json(&server, "/v1/calls?status=failed").await;
    let failed = failed["calls"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["function"], "trap");
    let (_, limited) = get_json(&server, "/v1/calls?limit=2").await;
    assert_eq!(limited["calls"].as_array().unwrap().len(), 2);

    let response = http()
        .delete(server.url("/v1/functions/trap"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(invoke(&server, "trap", "").await.status(), 404);
    let (_, failed) = get_json(&server, "/v1/calls?function=trap").await;
    assert_eq!(
        failed["calls"].as_array().unwrap().len(),
        1,
        "records outlive the function"
    );
}

#[tokio::test]
async fn guest_cannot_reach_host_files_or_network() {
    let server = Server::start();
    deploy(&server, "probe", &guest("fs-probe"), "").await;
    let response = invoke(&server, "probe", "").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let object = report.as_object().unwrap_or_else(|| panic!("{report}"));
    assert!(object.len() >= 4, "{report}");
    for (probe, result) in object {
        let result = result.as_str().unwrap_or_default();
        assert!(
            result.starts_with("error"),
            "{probe} was reachable: {result}"
        );
    }
}

#[tokio::test]
async fn a_hundred_concurrent_calls_all_return_and_are_recorded() {
    let server = Server::start();
    deploy(&server, "dice", &guest("dice"), "").await;
    let calls = (0..100).map(|_| async {
        let response = invoke(&server, "dice", r#"{"roll":"3d6"}"#).await;
        assert_eq!(response.status(), 200);
        let id = header(&response, "x-newt-call-id");
        assert_dice(&response.json().await.unwrap(), 3);
        id
    });
    let ids = futures::future::join_all(calls).await;
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 100);

    let (_, listed) = get_json(&server, "/v1/calls?function=dice&limit=1000").await;
    let listed = listed["calls"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    assert!(listed.iter().all(|c| c["status"] == "done"));
}
