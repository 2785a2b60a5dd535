//! Crashes and restarts: nothing accepted is lost.

use crate::support::{deploy, get_json, header, http, invoke, wait_for_call};
use newt_tests::{Server, fixture};

#[tokio::test]
async fn kill_9_keeps_functions_and_calls_and_runs_accepted_async_calls() {
    // One async slot, taken by a long call: the next async call waits, accepted.
    let mut server = Server::start_with_args(&["--async-concurrency", "1"]);
    let home = server.keep_home().unwrap();
    deploy(&server, "spin", fixture!("loop"), "?timeout_ms=3000").await;
    deploy(&server, "echo", fixture!("echo"), "").await;

    let sync = invoke(&server, "echo", "before the crash").await;
    assert_eq!(sync.status(), 200);
    let sync_id = header(&sync, "x-newt-call-id");
    // Reading the call back proves it reached the database.
    let (status, _) = get_json(&server, &format!("/v1/calls/{sync_id}")).await;
    assert_eq!(status, 200);

    let accept = |input: &'static str, name: &'static str| {
        let url = server.url(&format!("/v1/functions/{name}/invoke?async=true"));
        async move {
            let response = http().post(url).body(input).send().await.unwrap();
            assert_eq!(response.status(), 202);
            header(&response, "x-newt-call-id")
        }
    };
    let spinning = accept("", "spin").await;
    let waiting = accept("after the crash", "echo").await;
    let (_, call) = get_json(&server, &format!("/v1/calls/{waiting}")).await;
    assert_eq!(call["status"], "pending", "{call}");

    server.kill9();
    let server = Server::start_in(home.path(), &[]);

    let (_, functions) = get_json(&server, "/v1/functions").await;
    assert_eq!(functions["functions"].as_array().unwrap().len(), 2);
    let (_, old) = get_json(&server, &format!("/v1/calls/{sync_id}")).await;
    assert_eq!(old["status"], "done");
    assert_eq!(old["output"], "before the crash");

    let resumed = wait_for_call(&server, &waiting, 30).await;
    assert_eq!(resumed["status"], "done", "{resumed}");
    assert_eq!(resumed["output"], "after the crash");

    // The call that was running when the process died is not left `running`.
    let interrupted = wait_for_call(&server, &spinning, 30).await;
    assert_ne!(interrupted["status"], "done");
}

#[tokio::test]
async fn sigterm_flushes_call_records() {
    let mut server = Server::start();
    let home = server.keep_home().unwrap();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let response = invoke(&server, "echo", &format!("call {i}")).await;
        assert_eq!(response.status(), 200);
        ids.push(header(&response, "x-newt-call-id"));
    }
    let status = server.terminate();
    assert!(status.success(), "newt exited with {status}");
    let server = Server::start_in(home.path(), &[]);
    for id in ids {
        let (status, call) = get_json(&server, &format!("/v1/calls/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(call["status"], "done");
    }
    // The second start loads modules from the on-disk cache; the call still works.
    assert_eq!(invoke(&server, "echo", "x").await.status(), 200);
}
