//! Hostile clients over raw TCP: slowloris headers, stalled and lying bodies, more
//! connections than the cap, DNS rebinding and cross-site requests, and what a
//! caller without the token may learn.

use newt_tests::{Server, fixture, newt_bin};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `127.0.0.1:PORT` of a server.
fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(addr(server)).expect("connecting to the server")
}

/// One HTTP answer read off a socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Splits a complete answer (status line, headers, a `content-length` body) off `buf`.
fn parse(buf: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    if body.len() < length {
        return None;
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_string(),
        body: body[..length].to_string(),
    })
}

/// Reads one answer within `limit`; `None` if the server closed the connection
/// without one. Panics if neither happens in time.
fn read_answer(stream: &mut TcpStream, limit: Duration) -> Option<Answer> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    loop {
        if let Some(answer) = parse(&buf) {
            return Some(answer);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no answer within {limit:?}; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => {
                assert!(
                    buf.is_empty(),
                    "closed mid-answer: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                return None;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None, // reset: closed
        }
    }
}

/// Waits (at most `limit`) for the server to close `stream`, reading and dropping
/// whatever it sends; returns the bytes it sent.
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the connection is still open after {limit:?} (got {:?})",
            String::from_utf8_lossy(&got)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return got,
        }
    }
}

/// Sends one request on a fresh connection (`connection: close`) and reads the answer.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let host = addr(server);
    let mut head = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("host: {host}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut stream = connect(server);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_answer(&mut stream, Duration::from_secs(30)).expect("an answer")
}

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(server, "GET", path, headers, b"")
}

fn deploy_echo(server: &Server) {
    let answer = request(server, "PUT", "/v1/functions/echo", &[], fixture!("echo"));
    assert!(answer.status == 200 || answer.status == 201, "{answer:?}");
}

#[test]
fn slowloris_headers_are_cut_at_the_header_timeout() {
    let server = Server::start_with_args(&["--header-timeout", "1s"]);

    // Headers trickled a byte every 100 ms never finish in time.
    let mut slow = connect(&server);
    let started = Instant::now();
    let mut writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let request = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ".to_vec();
        for byte in request.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let got = wait_closed(&mut slow, Duration::from_secs(5));
    let closed_after = started.elapsed();
    println!(
        "slowloris: closed after {closed_after:?}, answer {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    trickle.join().unwrap();

    // A connection that sends nothing at all is cut the same way.
    let mut silent = connect(&server);
    let started = Instant::now();
    assert!(wait_closed(&mut silent, Duration::from_secs(5)).is_empty());
    let closed_after = started.elapsed();
    println!("silent connection: closed after {closed_after:?}");
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );

    // Meanwhile the server answers everyone else.
    assert_eq!(get(&server, "/healthz", &[]).status, 200);
}

#[test]
fn idle_keep_alive_connections_get_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start_with_args(&["--header-timeout", "1s", "--idle-timeout", "3s"]);
    let mut stream = connect(&server);
    let host = addr(&server);
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).expect("an answer");
    assert_eq!(answer.status, 200);
    let answered = Instant::now();
    // Still open past the header timeout: it is idle, not slow.
    std::thread::sleep(Duration::from_millis(1500));
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).expect("a second answer");
    assert_eq!(answer.status, 200);
    let answered_again = Instant::now();
    assert!(answered.elapsed() > Duration::from_secs(1));
    wait_closed(&mut stream, Duration::from_secs(6));
    let idle = answered_again.elapsed();
    println!("idle keep-alive connection: closed after {idle:?}");
    assert!(
        idle >= Duration::from_millis(2900) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
}

#[test]
fn a_stalled_body_gets_408_at_the_body_timeout() {
    let server = Server::start_with_args(&["--body-timeout", "1s"]);
    deploy_echo(&server);
    let mut stream = connect(&server);
    let host = addr(&server);
    stream
        .write_all(
            format!(
                "POST /v1/functions/echo/invoke HTTP/1.1\r\nhost: {host}\r\n\
                 content-length: 100\r\n\r\n0123456789"
            )
            .as_bytes(),
        )
        .unwrap();
    let started = Instant::now();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).expect("an answer");
    let answered_after = started.elapsed();
    println!("stalled body: {} after {answered_after:?}", answer.status);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.code(), "request_timeout");
    assert!(
        answered_after >= Duration::from_millis(900) && answered_after < Duration::from_secs(3),
        "{answered_after:?}"
    );
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.head
    );
    wait_closed(&mut stream, Duration::from_secs(3));

    // A trickled body that keeps coming, but too slowly, meets the same end.
    let mut stream = connect(&server);
    stream
        .write_all(
            format!(
                "POST /v1/functions/echo/invoke HTTP/1.1\r\nhost: {host}\r\n\
                 content-length: 100\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let started = Instant::now();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(stream);
    trickle.join().unwrap();

    // A body that arrives in time is served.
    let answer = request(
        &server,
        "POST",
        "/v1/functions/echo/invoke",
        &[],
        b"on time",
    );
    assert_eq!((answer.status, answer.body.as_str()), (200, "on time"));
}

#[test]
fn connections_over_the_cap_get_503_and_the_server_recovers() {
    let server = Server::start_with_args(&["--max-connections", "4", "--header-timeout", "60s"]);
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    // Let the server accept them all.
    std::thread::sleep(Duration::from_millis(300));

    // A fifth is answered 503 at once, without its request being read, and closed.
    let mut fifth = connect(&server);
    let started = Instant::now();
    let answer = read_answer(&mut fifth, Duration::from_secs(3)).expect("a 503");
    println!(
        "fifth connection: {} after {:?}",
        answer.status,
        started.elapsed()
    );
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.code(), "unavailable");
    assert!(answer.message().contains("--max-connections"), "{answer:?}");
    assert!(answer.head.to_ascii_lowercase().contains("retry-after: 1"));
    wait_closed(&mut fifth, Duration::from_secs(3));
    // So is a request on one.
    assert_eq!(get(&server, "/healthz", &[]).status, 503);

    // Once one of the four closes, the server answers again.
    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(&server, "/healthz", &[]);
        if answer.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The ones still open are still served.
    let host = addr(&server);
    let stream = &mut idle[0];
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let answer = read_answer(stream, Duration::from_secs(5)).expect("an answer");
    assert_eq!(answer.status, 200);
}

#[test]
fn a_lying_content_length_gets_413_before_any_body_is_read() {
    let server = Server::start_with_args(&[]);
    deploy_echo(&server);
    let host = addr(&server);
    let routes = [
        ("PUT", "/v1/functions/echo", "application/wasm"),
        (
            "PUT",
            "/v1/functions/echo",
            "multipart/form-data; boundary=x",
        ),
        ("POST", "/v1/functions/echo/invoke", "application/json"),
        ("PATCH", "/v1/functions/echo", "application/json"),
        ("POST", "/v1/runtimes", "application/json"),
        ("PATCH", "/v1/runtimes/wasm", "application/json"),
        ("POST", "/registerRuntime", "application/json"),
        (
            "POST",
            "/registerFunction/python3/dice",
            "multipart/form-data; boundary=x",
        ),
        ("POST", "/invokeFunction", "application/json"),
    ];
    for (method, path, content_type) in routes {
        let mut stream = connect(&server);
        stream
            .write_all(
                format!(
                    "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {content_type}\r\n\
                     content-length: 1000000000000\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        let started = Instant::now();
        let answer = read_answer(&mut stream, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{method} {path}: closed without an answer"));
        let took = started.elapsed();
        println!(
            "{method} {path} with a lying length: {} in {took:?}",
            answer.status
        );
        assert_eq!(answer.status, 413, "{method} {path}: {answer:?}");
        assert_eq!(answer.code(), "too_large", "{method} {path}");
        assert!(took < Duration::from_secs(1), "{method} {path}: {took:?}");
        wait_closed(&mut stream, Duration::from_secs(3));
    }
    // Nothing was changed by any of them.
    let answer = request(&server, "POST", "/v1/functions/echo/invoke", &[], b"hi");
    assert_eq!((answer.status, answer.body.as_str()), (200, "hi"));
}

#[test]
fn requests_for_another_host_get_421() {
    let server = Server::start_with_args(&["--allow-host", "newt.example"]);
    let port = addr(&server).rsplit_once(':').unwrap().1.to_string();
    for host in [
        format!("rebind.example:{port}"),
        format!("127.0.0.1.rebind.example:{port}"),
        "evil.example".to_string(),
    ] {
        let answer = get(&server, "/v1/functions", &[("host", &host)]);
        assert_eq!(answer.status, 421, "{host}: {answer:?}");
        assert_eq!(answer.code(), "misdirected_request");
        assert!(answer.message().contains("--allow-host"), "{answer:?}");
        // Deploys too: nothing reaches a handler.
        let answer = request(
            &server,
            "PUT",
            "/v1/functions/rebound",
            &[("host", &host)],
            fixture!("echo"),
        );
        assert_eq!(answer.status, 421, "{answer:?}");
    }
    assert_eq!(get(&server, "/v1/functions/rebound", &[]).status, 404);
    for host in [
        addr(&server),
        format!("localhost:{port}"),
        format!("newt.example:{port}"),
        "NEWT.example".to_string(),
    ] {
        let answer = get(&server, "/v1/functions", &[("host", &host)]);
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
    }
}

#[tokio::test]
async fn cross_origin_requests_get_403_and_the_cli_still_works() {
    let server = Server::start_with_args(&["--allow-origin", "https://app.example"]);
    deploy_echo(&server);
    let own = server.base.clone();
    for origin in ["https://evil.example", "null", "http://localhost:1"] {
        let answer = request(
            &server,
            "POST",
            "/v1/functions/echo/invoke",
            &[("origin", origin), ("content-type", "text/plain")],
            b"from a web page",
        );
        assert_eq!(answer.status, 403, "{origin}: {answer:?}");
        assert_eq!(answer.code(), "forbidden");
        assert!(answer.message().contains("--allow-origin"), "{answer:?}");
        let answer = request(
            &server,
            "PUT",
            "/v1/functions/planted",
            &[("origin", origin)],
            fixture!("echo"),
        );
        assert_eq!(answer.status, 403, "{answer:?}");
    }
    assert_eq!(get(&server, "/v1/functions/planted", &[]).status, 404);
    for origin in [own.as_str(), "https://app.example"] {
        let answer = request(
            &server,
            "POST",
            "/v1/functions/echo/invoke",
            &[("origin", origin)],
            b"same site",
        );
        assert_eq!(answer.status, 200, "{origin}: {answer:?}");
    }

    // No Origin: curl, scripts, the CLI.
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/v1/functions/echo/invoke"))
        .body("from reqwest")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let out = std::process::Command::new(newt_bin())
        .args(["invoke", "echo", "from the cli"])
        .env("NEWT_SERVER", &server.base)
        .env_remove("NEWT_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from the cli");
    let out = std::process::Command::new(newt_bin())
        .args(["functions"])
        .env("NEWT_SERVER", &server.base)
        .env_remove("NEWT_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo"));
}

#[test]
fn healthz_tells_only_ok_to_callers_without_the_token() {
    let server = Server::start_with_args(&["--token", "s3cret-token"]);
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let answer = get(&server, "/healthz", &headers);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json(), serde_json::json!({ "status": "ok" }));
    }
    let answer = get(
        &server,
        "/healthz",
        &[("authorization", "Bearer s3cret-token")],
    );
    assert_eq!(answer.status, 200);
    let health = answer.json();
    assert_eq!(health["status"], "ok");
    assert!(health["version"].is_string(), "{health}");
    assert_eq!(health["wasm"]["reachable"], true, "{health}");
    assert!(health.get("docker").is_some(), "{health}");
}

#[test]
fn register_function_takes_only_a_multipart_module() {
    let server = Server::start_with_args(&[]);
    let answer = request(
        &server,
        "POST",
        "/registerFunction/wasm/echo",
        &[("content-type", "application/octet-stream")],
        fixture!("echo"),
    );
    assert_eq!(answer.status, 415, "{answer:?}");
    assert_eq!(answer.code(), "unsupported_media_type");
    assert!(answer.message().contains("`module`"), "{answer:?}");
    assert!(
        answer.message().contains("multipart/form-data"),
        "{answer:?}"
    );

    // The form works.
    let wasm = fixture!("echo");
    let mut body =
        b"--x\r\ncontent-disposition: form-data; name=\"module\"; filename=\"echo.wasm\"\r\n\
                     content-type: application/wasm\r\n\r\n"
            .to_vec();
    body.extend_from_slice(wasm);
    body.extend_from_slice(b"\r\n--x--\r\n");
    let answer = request(
        &server,
        "POST",
        "/registerFunction/wasm/echo",
        &[("content-type", "multipart/form-data; boundary=x")],
        &body,
    );
    assert!(answer.status == 200 || answer.status == 201, "{answer:?}");
    assert_eq!(answer.json()["status"], "ready");
    // v1 keeps raw bodies.
    let answer = request(&server, "PUT", "/v1/functions/echo2", &[], wasm);
    assert_eq!(answer.status, 201, "{answer:?}");
}
