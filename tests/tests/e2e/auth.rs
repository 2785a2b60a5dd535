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
