//! Cold Python starts through the server: under `preload = none` every call gets a
//! container no other call used (most of them started ahead of the call), the ones
//! started ahead are labelled so, and a shutdown or the next start removes them.

use crate::containers::deploy_python;
use crate::support::{eventually, header, invoke};
use newt_tests::{Server, containers_of, docker_available, tar_gz};
use serde_json::Value;
use std::collections::HashSet;

const WHO: &str = r#"
import os, socket

LOADED = os.urandom(8).hex()

def handler(event):
    return {"host": socket.gethostname(), "loaded": LOADED}
"#;

/// Containers of `server` started ahead of their calls.
fn ahead_of(server: &Server) -> Vec<String> {
    newt_tests::containers_labelled(server, &["newt.ahead=true"])
}

async fn who(server: &Server, name: &str) -> Value {
    let response = invoke(server, name, "{}").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-newt-start"), "cold");
    response.json().await.unwrap()
}

#[tokio::test]
async fn python_cold_calls_each_get_their_own_container_and_none_is_left() {
    if !docker_available() {
        return;
    }
    let mut server = Server::start();
    let bundle = tar_gz(&[("main.py", WHO.as_bytes())]);
    deploy_python(&server, "fresh", bundle, "&preload=none").await;

    // Sequential and concurrent calls: no two share a container or an import.
    let mut hosts = HashSet::new();
    let mut loaded = HashSet::new();
    for _ in 0..3 {
        let out = who(&server, "fresh").await;
        assert!(hosts.insert(out["host"].to_string()), "{out} twice");
        assert!(loaded.insert(out["loaded"].to_string()), "{out} twice");
    }
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let url = server.url("/v1/functions/fresh/invoke");
            tokio::spawn(async move {
                let response = crate::support::http()
                    .post(url)
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(header(&response, "x-newt-start"), "cold");
                response.json::<Value>().await.unwrap()
            })
        })
        .collect();
    for call in calls {
        let out = call.await.unwrap();
        assert!(hosts.insert(out["host"].to_string()), "{out} twice");
        assert!(loaded.insert(out["loaded"].to_string()), "{out} twice");
    }

    // Containers are started ahead for the next calls, and a call takes them.
    eventually(120, "a container started ahead", async || {
        !ahead_of(&server).is_empty()
    })
    .await;
    let ready: HashSet<String> = ahead_of(&server).into_iter().collect();
    let out = who(&server, "fresh").await;
    let host = out["host"].as_str().unwrap();
    assert!(
        ready
            .iter()
            .any(|id| id.starts_with(host) || host.starts_with(id.as_str())),
        "{host} was not one of the containers started ahead: {ready:?}"
    );

    // A restart over the same home removes what the previous process left, those
    // started ahead included.
    eventually(120, "a container started ahead", async || {
        !ahead_of(&server).is_empty()
    })
    .await;
    server.kill9();
    let home = server.keep_home().expect("the home");
    assert!(!containers_of(&server).is_empty());
    let mut server = Server::start_in(home.path(), &[]);
    eventually(
        60,
        "the previous process's containers removed",
        async || containers_of(&server).is_empty(),
    )
    .await;

    // A shutdown removes them too.
    let bundle = tar_gz(&[("main.py", WHO.as_bytes())]);
    deploy_python(&server, "again", bundle, "&preload=none").await;
    who(&server, "again").await;
    eventually(120, "a container started ahead", async || {
        !ahead_of(&server).is_empty()
    })
    .await;
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(
        containers_of(&server).is_empty(),
        "containers left after shutdown"
    );
}
