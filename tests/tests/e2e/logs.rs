//! Live logs, the server's JSON log and call traces, against the real binary:
//! `GET /v1/functions/{name}/logs` (JSON lines and server-sent events), `newt logs -f`,
//! `newt serve --log-format json` and `--otlp-endpoint` with a small OTLP/HTTP
//! receiver on loopback.

use crate::support::{deploy, http, invoke, metrics_text};
use newt_tests::{Server, fixture, newt_bin};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for an event it expects.
const WAIT: Duration = Duration::from_secs(20);

/// A server-sent events reader over a streaming response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(server: &Server, query: &str) -> Events {
        let response = http()
            .get(server.url(&format!("/v1/functions/echo/logs?{query}")))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", server.log());
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{:?}",
            response.headers()
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next `event: call`'s data, or `None` when the stream ended; fails after
    /// [`WAIT`].
    async fn next_call(&mut self) -> Option<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .filter(|_| block.starts_with("event: call"))
                {
                    return Some(serde_json::from_str(data).unwrap());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("no event within the deadline")
                .expect("reading the stream");
            match chunk {
                Some(chunk) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                None => return None,
            }
        }
    }
}

async fn call_echo(server: &Server, input: &str) -> String {
    let response = invoke(server, "echo", input).await;
    assert_eq!(response.status(), 200);
    response.headers()["x-newt-call-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn followers_get_each_call_with_its_logs_in_order() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut events = Events::open(&server, "follow=true").await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(call_echo(&server, &format!("call {i}")).await);
    }
    let mut nums = Vec::new();
    for id in &ids {
        let event = events.next_call().await.expect("an event per call");
        assert_eq!(event["call_id"], id.as_str(), "{event}");
        assert_eq!(event["status"], "done");
        assert_eq!(event["function"], "echo");
        assert_eq!(event["logs"], "echo\n");
        assert!(event["duration_ms"].as_f64().unwrap() >= 0.0, "{event}");
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
        // The call's input and output are not part of its log event.
        assert!(event.get("input").is_none() && event.get("output").is_none());
        nums.push(event["num"].as_i64().unwrap());
    }
    assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");

    // Calls of another function are not this stream's.
    deploy(&server, "other", fixture!("echo"), "").await;
    let response = invoke(&server, "other", "x").await;
    assert_eq!(response.status(), 200);
    let last = call_echo(&server, "after").await;
    let event = events.next_call().await.unwrap();
    assert_eq!(event["call_id"], last.as_str(), "{event}");
}

#[tokio::test]
async fn since_replays_and_call_shows_one_then_follow_goes_live_without_repeats() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(call_echo(&server, &format!("{i}")).await);
    }

    // Without follow: JSON lines, oldest first.
    let response = http()
        .get(server.url("/v1/functions/echo/logs?since=10m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let listed: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let listed_ids: Vec<&str> = listed
        .iter()
        .map(|e| e["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, ids, "{body}");
    assert!(listed.iter().all(|e| e["logs"] == "echo\n"), "{body}");

    // A time after every call selects none of them.
    let later = http()
        .get(server.url("/v1/functions/echo/logs?since=2999-01-01T00:00:00Z"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(later, "");

    // One call, by id: the stream sends it and ends.
    let mut one = Events::open(&server, &format!("follow=true&call={}", ids[1])).await;
    let event = one.next_call().await.unwrap();
    assert_eq!(event["call_id"], ids[1].as_str());
    assert!(
        one.next_call().await.is_none(),
        "the stream ends after the call"
    );

    // since + follow: the backlog, then live calls, each once.
    let mut events = Events::open(&server, "follow=true&since=10m").await;
    for id in &ids {
        assert_eq!(events.next_call().await.unwrap()["call_id"], id.as_str());
    }
    let live = call_echo(&server, "live").await;
    assert_eq!(events.next_call().await.unwrap()["call_id"], live.as_str());

    // What is wrong with a request is said.
    for (query, status) in [
        ("since=yesterday", 400),
        ("limit=0", 400),
        ("colour=red", 400),
        ("call=not-a-call", 400),
    ] {
        let response = http()
            .get(server.url(&format!("/v1/functions/echo/logs?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
    }
    let missing = http()
        .get(server.url("/v1/functions/nope/logs?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn followers_are_capped_and_one_that_leaves_frees_its_place() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut open = Vec::new();
    for _ in 0..64 {
        open.push(Events::open(&server, "follow=true").await);
    }
    let refused = http()
        .get(server.url("/v1/functions/echo/logs?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));

    // A client that disconnects gives its place back (once the server notices).
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        let response = http()
            .get(server.url("/v1/functions/echo/logs?follow=true"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break Events {
                response,
                buffer: String::new(),
            };
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = call_echo(&server, "x").await;
    assert_eq!(again.next_call().await.unwrap()["call_id"], id.as_str());
}

#[tokio::test]
async fn a_shutdown_closes_open_streams() {
    let mut server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut events = Events::open(&server, "follow=true").await;
    let id = call_echo(&server, "x").await;
    assert_eq!(events.next_call().await.unwrap()["call_id"], id.as_str());

    // SIGTERM: the server ends the stream instead of waiting out its grace period
    // (30 s) for it; the process exits and the stream ends cleanly.
    let stopping = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    assert!(events.next_call().await.is_none(), "the stream ended");
    let (server, status) = tokio::time::timeout(WAIT, status).await.unwrap().unwrap();
    assert!(status.success(), "{status}: {}", server.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(25),
        "the shutdown waited for the stream: {}",
        server.log()
    );
}

#[tokio::test]
async fn newt_logs_follow_prints_a_calls_log_line() {
    let server = Server::start();
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut child = Command::new(newt_bin())
        .args(["logs", "echo", "-f"])
        .env("NEWT_SERVER", &server.base)
        .env_remove("NEWT_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Calls until the follower (connecting on its own) prints one: it shows only
    // calls that finish after it connected.
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    let id = 'found: loop {
        let id = call_echo(&server, "x").await;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            lines.push(line);
        }
        if let Some(at) = lines.iter().position(|l| l.contains(&id)) {
            break 'found (id, at);
        }
        assert!(Instant::now() < deadline, "newt logs -f printed {lines:?}");
    };
    let _ = child.kill();
    let _ = child.wait();
    let (id, at) = id;
    let header = &lines[at];
    assert!(header.starts_with("=== "), "{header}");
    assert!(header.contains(" done "), "{header}");
    assert!(header.contains(" ms "), "{header}");
    assert_eq!(
        lines.get(at + 1).map(String::as_str),
        Some("echo"),
        "{lines:?}"
    );
    assert!(lines.iter().filter(|l| l.contains(&id)).count() == 1);

    // Without -f: the recent calls, and --call shows one.
    let output = Command::new(newt_bin())
        .args(["logs", "echo", "--call", &id])
        .env("NEWT_SERVER", &server.base)
        .env_remove("NEWT_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(&id) && text.ends_with("echo\n"), "{text}");
}

#[tokio::test]
async fn log_format_json_makes_every_server_log_line_json() {
    let server = Server::start_with_args(&["--log-format", "json"]);
    deploy(&server, "echo", fixture!("echo"), "").await;
    call_echo(&server, "x").await;
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    for line in &lines {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nlog:\n{log}"));
        assert!(entry["level"].is_string(), "{line}");
        assert!(entry["fields"].is_object(), "{line}");
    }
}

/// An OTLP/HTTP receiver on loopback: it keeps every JSON body POSTed to /v1/traces.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let keep = keep.clone();
            tokio::spawn(async move {
                // One request per connection at a time; bodies are small here.
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 8192];
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    assert!(buf.len() < 16 << 20, "an export over 16 MiB");
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + length {
                        continue;
                    }
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    assert!(head.contains("content-type: application/json"), "{head}");
                    let body: Vec<u8> = buf
                        .drain(..head_end + 4 + length)
                        .skip(head_end + 4)
                        .collect();
                    keep.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), received)
}

#[tokio::test]
async fn each_call_is_exported_as_a_trace_with_its_phases() {
    let (endpoint, received) = otlp_receiver().await;
    let server = Server::start_with_args(&["--otlp-endpoint", &endpoint]);
    deploy(&server, "echo", fixture!("echo"), "").await;
    let id = call_echo(&server, "x").await;

    let deadline = Instant::now() + WAIT;
    let spans = loop {
        let spans: Vec<Value> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|body| {
                body["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
                    .flat_map(|s| s["spans"].as_array().into_iter().flatten())
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        if spans.iter().any(|s| s["name"] == "call echo") {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no call span exported; server log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let call = spans.iter().find(|s| s["name"] == "call echo").unwrap();
    let attribute = |span: &Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(attribute(call, "newt.function")["stringValue"], "echo");
    assert_eq!(attribute(call, "newt.call_id")["stringValue"], id.as_str());
    assert_eq!(attribute(call, "newt.status")["stringValue"], "done");
    assert_eq!(attribute(call, "newt.version")["intValue"], "1");
    assert!(attribute(call, "newt.start")["stringValue"].is_string());
    // The trace id is the call id.
    assert_eq!(call["traceId"], id.replace('-', ""));
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == call["spanId"])
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(children.len(), 4, "{children:?}");
    assert_eq!(children[0], "queue");
    assert!(matches!(children[1], "create" | "claim"), "{children:?}");
    assert_eq!(&children[2..], ["exec", "record"]);
    let ns = |span: &Value, key: &str| span[key].as_str().unwrap().parse::<u64>().unwrap();
    for child in spans.iter().filter(|s| s["parentSpanId"] == call["spanId"]) {
        assert!(ns(child, "startTimeUnixNano") >= ns(call, "startTimeUnixNano"));
        assert!(ns(child, "endTimeUnixNano") <= ns(call, "endTimeUnixNano"));
    }

    // The exporter's counters are in /metrics.
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("newt_otlp_calls_exported_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("newt_otlp_calls_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_dead_collector_never_fails_calls_and_drops_are_counted() {
    // A port nobody listens on.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let server = Server::start_with_args(&["--otlp-endpoint", &endpoint]);
    deploy(&server, "echo", fixture!("echo"), "").await;
    for _ in 0..3 {
        call_echo(&server, "x").await;
    }
    crate::support::eventually(20, "the failed exports to be counted", async || {
        let metrics = metrics_text(&server).await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("newt_otlp_calls_dropped_total "))
            .is_some_and(|n| n.parse::<u64>().unwrap() >= 3)
    })
    .await;
}
