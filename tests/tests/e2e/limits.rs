//! Hostile guests: endless loops, memory hogs, traps.

use crate::support::{deploy, error_of, get_json, header, invoke};
use newt_tests::{Server, fixture};
use std::time::Duration;

#[tokio::test]
async fn endless_loop_hits_its_deadline_while_others_are_served() {
    let server = Server::start();
    deploy(&server, "spin", fixture!("loop"), "?timeout_ms=1500").await;
    deploy(&server, "echo", fixture!("echo"), "").await;

    let spinning = {
        let url = server.url("/v1/functions/spin/invoke");
        tokio::spawn(async move { reqwest::Client::new().post(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The loop is running on the same engine; another call is answered meanwhile.
    let echo = invoke(&server, "echo", "still here").await;
    assert_eq!(echo.status(), 200);
    assert_eq!(echo.text().await.unwrap(), "still here");
    assert!(
        !spinning.is_finished(),
        "the loop ended before its deadline"
    );

    let response = spinning.await.unwrap();
    let id = header(&response, "x-newt-call-id");
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (504, "timeout"));
    assert!(message.contains("1500 ms"), "{message}");
    let (_, call) = get_json(&server, &format!("/v1/calls/{id}")).await;
    assert_eq!(call["status"], "timeout");
}

#[tokio::test]
async fn memory_hog_fails_saying_so() {
    let server = Server::start();
    deploy(&server, "hog", fixture!("grow"), "?memory_mb=16").await;
    let (status, code, message) = error_of(invoke(&server, "hog", "").await).await;
    assert_eq!((status, code.as_str()), (502, "function_failed"));
    assert!(
        message.contains("memory limit of 16 MiB exceeded"),
        "{message}"
    );
}

#[tokio::test]
async fn trap_fails_with_the_trap_message() {
    let server = Server::start();
    deploy(&server, "trap", fixture!("trap"), "").await;
    let response = invoke(&server, "trap", "").await;
    let id = header(&response, "x-newt-call-id");
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, 502);
    assert!(message.contains("unreachable"), "{message}");
    let (_, call) = get_json(&server, &format!("/v1/calls/{id}")).await;
    assert_eq!(call["status"], "failed");
}
