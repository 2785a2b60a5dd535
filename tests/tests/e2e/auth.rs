//! Bearer tokens.

use crate::support::http;
use newt_tests::Server;

#[tokio::test]
async fn token_is_required_on_v1_when_configured() {
    let server = Server::start_with_args(&["--token", "s3cret-token"]);
    let url = server.url("/v1/functions");
    assert_eq!(http().get(&url).send().await.unwrap().status(), 401);
    let wrong = http().get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http()
        .get(&url)
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    // Liveness stays open for load balancers.
    let health = http().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn public_address_without_token_refuses_to_start() {
    let home = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(newt_tests::newt_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--home"])
        .arg(home.path())
        .env_remove("NEWT_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

const ADMIN: &str = "admin-token-0123456789";
const APP: &str = "app-invoke-token-0123";
const CI: &str = "ci-invoke-token-01234";

/// A request with a bearer token; `None` sends none.
async fn send(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut request = http().request(method, url).body(body.to_vec());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn invoke_tokens_invoke_and_read_only_their_own_calls() {
    use reqwest::Method;
    let server = Server::start_with_args(&[
        "--token",
        ADMIN,
        "--invoke-token",
        &format!("app={APP}"),
        "--invoke-token",
        &format!("ci={CI}"),
    ]);
    let echo = newt_tests::fixture!("echo");
    // Deploying is the admin's.
    let deploy = server.url("/v1/functions/echo");
    let (status, body) = send(Method::PUT, deploy.clone(), Some(APP), echo).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("`app`"));
    assert_eq!(send(Method::PUT, deploy, Some(ADMIN), echo).await.0, 201);

    // Invoking is everyone's with a token; the call records who made it.
    let invoke = server.url("/v1/functions/echo/invoke");
    assert_eq!(send(Method::POST, invoke.clone(), None, b"{}").await.0, 401);
    let response = http()
        .post(&invoke)
        .bearer_auth(APP)
        .body("{\"who\":\"app\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-newt-call-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (_, mine) = send(
        Method::GET,
        server.url(&format!("/v1/calls/{id}")),
        Some(APP),
        b"",
    )
    .await;
    assert_eq!(mine["output"]["who"], "app", "{mine}");
    let num = mine["num"].as_i64().unwrap();

    // Another invoke token cannot see it, by id, by number or in lists.
    for path in [
        format!("/v1/calls/{id}"),
        format!("/v1/calls/{num}"),
        format!("/call/{num}"),
    ] {
        let (status, _) = send(Method::GET, server.url(&path), Some(CI), b"").await;
        assert_eq!(status, 404, "{path}");
    }
    let (_, listed) = send(Method::GET, server.url("/v1/calls"), Some(CI), b"").await;
    assert_eq!(listed["calls"].as_array().unwrap().len(), 0, "{listed}");
    let (_, seed) = send(Method::GET, server.url("/calls"), Some(CI), b"").await;
    assert_eq!(seed.as_object().unwrap().len(), 0, "{seed}");
    let (_, listed) = send(Method::GET, server.url("/v1/calls"), Some(APP), b"").await;
    assert_eq!(listed["calls"].as_array().unwrap().len(), 1, "{listed}");
    // The admin sees everything.
    let (status, _) = send(
        Method::GET,
        server.url(&format!("/call/{num}")),
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(status, 200);

    // Everything else needs the admin token.
    for (method, path) in [
        (Method::GET, "/v1/functions"),
        (Method::DELETE, "/v1/functions/echo"),
        (Method::GET, "/v1/pools"),
        (Method::GET, "/v1/runtimes"),
        (Method::GET, "/metrics"),
        (Method::GET, "/functions"),
    ] {
        let (status, _) = send(method.clone(), server.url(path), Some(CI), b"").await;
        assert_eq!(status, 403, "{method} {path}");
    }
}

#[test]
fn invoke_tokens_need_an_admin_token() {
    let home = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(newt_tests::newt_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--invoke-token",
            "app=0123456789abcdef",
        ])
        .arg("--home")
        .arg(home.path())
        .env_remove("NEWT_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--invoke-token needs --token"), "{stderr}");
}
