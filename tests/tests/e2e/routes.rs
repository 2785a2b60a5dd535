//! Functions over plain HTTP: `/fn/{name}/...` for every function, routes added with
//! `newt route`, the request envelope a function sees and the `statusCode` answer it
//! may give, with the same tokens and records as `invoke`.

use crate::cli::{newt, stdout_of};
use crate::containers::deploy_python;
use crate::support::{deploy, error_of, get_json, header, http};
use newt_tests::{Server, docker_available, fixture, guest, tar_gz};
use serde_json::{Value, json};

/// The dice example (newt_sdk::http::serve_or_run) deployed with a route by the CLI:
/// the SDK's request and response types over HTTP, plain invoke beside it.
#[tokio::test]
async fn an_sdk_guest_deployed_with_a_route_answers_over_http_and_invoke() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("dice.wasm");
    std::fs::write(&wasm, guest("dice")).unwrap();
    let wasm = wasm.to_str().unwrap();
    let deployed = stdout_of(&newt(
        &server,
        &[
            "deploy",
            "dice",
            wasm,
            "--route",
            "/api/dice",
            "--route-method",
            "get",
        ],
    ));
    assert!(deployed.contains("served at /api/dice"), "{deployed}");
    let listed = stdout_of(&newt(&server, &["route", "list"]));
    assert!(
        listed.contains("/api/dice") && listed.contains("GET"),
        "{listed}"
    );

    for url in ["/api/dice/3d6", "/api/dice?roll=3d6", "/fn/dice/3d6"] {
        let response = http().get(server.url(url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(header(&response, "content-type"), "application/json");
        let rolled: Vec<u32> = response.json().await.unwrap();
        assert_eq!(rolled.len(), 3, "{url}");
        assert!(rolled.iter().all(|n| (1..=6).contains(n)), "{rolled:?}");
    }
    // The function's own status and message for a bad roll.
    let bad = http()
        .get(server.url("/api/dice/lots"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("invalid roll"),
        "{error}"
    );
    // The route serves GET only: POST is refused before the function runs.
    let post = http()
        .post(server.url("/api/dice/3d6"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    // /fn/ serves every method; the function itself answers 405 with its allow.
    let post = http()
        .post(server.url("/fn/dice/3d6"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (post.status().as_u16(), header(&post, "allow")),
        (405, "GET".into())
    );

    // Plain invoke keeps working: the same module, no envelope.
    let invoked = http()
        .post(server.url("/v1/functions/dice/invoke"))
        .body(r#"{"roll":"2d20"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(invoked.status(), 200);
    let rolled: Vec<u32> = invoked.json().await.unwrap();
    assert_eq!(rolled.len(), 2);

    // A deploy's route is checked before anything is deployed.
    let refused = http()
        .put(server.url("/v1/functions/other?route=/v1/x"))
        .body(guest("dice"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(refused).await.0, 400);
    let (status, _) = get_json(&server, "/v1/functions/other").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fn_paths_reach_a_wasm_guest_as_an_envelope_and_are_recorded() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;

    // The echo guest returns its input: the envelope comes back as a 200 JSON body.
    let response = http()
        .post(server.url("/fn/echo/a/b?x=1&y=%20"))
        .header("x-test", "one")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "application/json");
    assert_eq!(header(&response, "x-newt-start"), "cold");
    let call_id = header(&response, "x-newt-call-id");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "x=1&y=%20");
    assert_eq!(seen["headers"]["x-test"], "one");
    assert_eq!(seen["body"], "hello");

    // Recorded like any other call, under the function's name.
    let (status, call) = get_json(&server, &format!("/v1/calls/{call_id}")).await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["function"], "echo");
    assert_eq!(call["status"], "done");

    // No path after the name is `/`; a body that is not UTF-8 comes as base64.
    for url in ["/fn/echo", "/fn/echo/"] {
        let response = http()
            .put(server.url(url))
            .body(vec![0xff, 0x00, 0x01])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["method"], "PUT");
        assert_eq!(seen["path"], "/", "{url}");
        assert_eq!(seen["body_base64"], "/wAB");
    }

    // Failures answer as invoke's do.
    let missing = http().get(server.url("/fn/nope/x")).send().await.unwrap();
    assert_eq!(error_of(missing).await.0, 404);
    deploy(&server, "fail", fixture!("fail"), "").await;
    let failed = http().get(server.url("/fn/fail")).send().await.unwrap();
    assert!(!header(&failed, "x-newt-call-id").is_empty());
    let (status, code, _) = error_of(failed).await;
    assert_eq!((status, code.as_str()), (502, "function_failed"));
    let (status, code, _) =
        error_of(http().get(server.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

#[tokio::test]
async fn routes_from_the_cli_serve_a_prefix_for_their_methods_only() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let added = stdout_of(&newt(
        &server,
        &[
            "route",
            "add",
            "/api/echo/",
            "echo",
            "--method",
            "get",
            "--method",
            "POST",
        ],
    ));
    assert!(added.contains("/api/echo -> echo (GET, POST)"), "{added}");
    let listed = stdout_of(&newt(&server, &["route", "list"]));
    assert!(
        listed.contains("/api/echo") && listed.contains("GET, POST"),
        "{listed}"
    );

    // The function sees the path after the prefix.
    for (url, path) in [("/api/echo/dice/6?n=2", "/dice/6"), ("/api/echo", "/")] {
        let response = http().get(server.url(url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["path"], path, "{url}");
        assert_eq!(seen["method"], "GET");
    }
    // Other methods are refused with what is allowed; other paths are not routed.
    let wrong = http()
        .delete(server.url("/api/echo/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&wrong, "allow"), "GET, POST");
    assert_eq!(error_of(wrong).await.0, 405);
    let beside = http().get(server.url("/api/echoes")).send().await.unwrap();
    assert_eq!(beside.status(), 404);

    // The longest prefix wins.
    deploy(&server, "fail", fixture!("fail"), "").await;
    stdout_of(&newt(
        &server,
        &["route", "add", "/api/echo/broken", "fail"],
    ));
    let deeper = http()
        .get(server.url("/api/echo/broken/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(deeper.status(), 502);
    let shallower = http()
        .get(server.url("/api/echo/brokenx"))
        .send()
        .await
        .unwrap();
    assert_eq!(shallower.status(), 200);

    // Both are listed.
    let (_, routes) = get_json(&server, "/v1/routes").await;
    assert_eq!(routes["routes"].as_array().unwrap().len(), 2, "{routes}");

    stdout_of(&newt(&server, &["route", "rm", "/api/echo"]));
    let gone = http().get(server.url("/api/echo/x")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let again = newt(&server, &["route", "rm", "/api/echo"]);
    assert!(!again.status.success());
}

#[tokio::test]
async fn routes_survive_a_restart() {
    let mut server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    stdout_of(&newt(&server, &["route", "add", "/hook", "echo"]));
    let home = server.keep_home().unwrap();
    drop(server);
    let server = Server::start_in(home.path(), &[]);
    let response = http()
        .post(server.url("/hook/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", server.log());
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/x");
}

#[tokio::test]
async fn routes_may_not_cover_the_hosts_own_paths_or_name_unknown_functions() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    for path in [
        "/v1",
        "/v1/functions/echo",
        "/fn/other",
        "/healthz",
        "/metrics",
        "/invokeFunction",
        "/calls",
        "no-slash",
        "/a/../b",
    ] {
        let response = http()
            .post(server.url("/v1/routes"))
            .json(&json!({"path": path, "function": "echo"}))
            .send()
            .await
            .unwrap();
        let (status, _, message) = error_of(response).await;
        assert_eq!(status, 400, "{path}: {message}");
        assert!(message.contains("invalid route path"), "{path}: {message}");
    }
    let output = newt(&server, &["route", "add", "/v1/mine", "echo"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("newt serves it itself"),
        "{output:?}"
    );
    let unknown = http()
        .put(server.url("/v1/routes"))
        .json(&json!({"path": "/x", "function": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(unknown).await.0, 404);
    // The API's own paths keep answering, even under a route at `/`.
    stdout_of(&newt(&server, &["route", "add", "/", "echo"]));
    let (status, _) = get_json(&server, "/v1/functions").await;
    assert_eq!(status, 200);
    let typo = http()
        .get(server.url("/v1/functionz"))
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 404);
    let site = http().get(server.url("/index.html")).send().await.unwrap();
    let seen: Value = site.json().await.unwrap();
    assert_eq!(seen["path"], "/index.html");
}

#[tokio::test]
async fn routes_take_the_same_tokens_as_invoke_and_keep_them_from_the_function() {
    const ADMIN: &str = "admin-token-0123456789";
    const APP: &str = "app-invoke-token-0123";
    let server =
        Server::start_with_args(&["--token", ADMIN, "--invoke-token", &format!("app={APP}")]);
    let deployed = http()
        .put(server.url("/v1/functions/echo"))
        .bearer_auth(ADMIN)
        .body(fixture!("echo").to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let add = |token: &'static str| {
        http()
            .post(server.url("/v1/routes"))
            .bearer_auth(token)
            .json(&json!({"path": "/api", "function": "echo"}))
            .send()
    };
    // Managing routes is the admin's.
    assert_eq!(add(APP).await.unwrap().status(), 403);
    assert_eq!(add(ADMIN).await.unwrap().status(), 201);

    for url in ["/fn/echo/x", "/api/x"] {
        let anonymous = http().get(server.url(url)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{url}");
        let response = http()
            .get(server.url(url))
            .bearer_auth(APP)
            .header("x-kept", "yes")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["headers"]["x-kept"], "yes");
        // newt's token is not the function's to see.
        assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    }
    // A path no route serves says so without a token.
    let nowhere = http().get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
}

const PYTHON_HTTP: &str = r#"
import json

def handler(event):
    if event.get("path") == "/plain":
        return {"plain": True}
    return {
        "statusCode": 201,
        "headers": {"x-made": "yes", "content-type": "text/plain"},
        "cookies": ["session=1"],
        "body": "made " + event["method"] + " " + event["path"] + " " + event["body"],
    }
"#;

#[tokio::test]
async fn python_handlers_answer_with_status_code_headers_and_body() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    deploy_python(
        &server,
        "maker",
        tar_gz(&[("main.py", PYTHON_HTTP.as_bytes())]),
        "",
    )
    .await;
    let response = http()
        .post(server.url("/fn/maker/things"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", server.log());
    assert_eq!(header(&response, "x-made"), "yes");
    assert_eq!(header(&response, "set-cookie"), "session=1");
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert!(!header(&response, "x-newt-call-id").is_empty());
    assert_eq!(response.text().await.unwrap(), "made POST /things x");

    // Without statusCode the return value is a 200 JSON body, as from invoke.
    let plain = http()
        .get(server.url("/fn/maker/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.json::<Value>().await.unwrap(), json!({"plain": true}));
}
