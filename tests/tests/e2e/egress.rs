//! Egress of Python functions (issue 14): deny by default, allow per function. Every
//! destination is a server this test starts on the host's loopback (127.0.0.2 allowed,
//! 127.0.0.3 not); the container reaches them only through newt's egress proxy.

use crate::containers::deploy_python;
use crate::support::{invoke, metric};
use newt_tests::{Server, containers_of, docker_available, tar_gz};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches each URL of the event (without following redirects unless asked), tries a
/// direct connection to each `direct` address, and times `bench` GETs through the
/// proxy and to a server inside the container without it.
const FETCH: &str = r#"
import errno, json, os, socket, threading, time, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None

def get(url, follow=True):
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=10) as answer:
            return [answer.status, answer.read().decode()]
    except urllib.error.HTTPError as error:
        return [error.code, error.read().decode()]
    except Exception as error:
        return [0, repr(error)]

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected"
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))

class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

def per_get_us(url, n, proxied):
    opener = urllib.request.build_opener() if proxied else urllib.request.build_opener(urllib.request.ProxyHandler({}))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with opener.open(url, timeout=10) as answer:
            answer.read()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return times[len(times) // 2]

def handler(event):
    out = {"socket": os.path.exists("/run/newt/egress.sock"),
           "proxy": os.environ.get("HTTP_PROXY")}
    for name, url in event.get("get", {}).items():
        out[name] = get(url)
    for name, url in event.get("nofollow", {}).items():
        out[name] = get(url, follow=False)
    for name, (host, port) in event.get("direct", {}).items():
        out[name] = direct(host, port)
    if "bench" in event:
        n = event["bench"]["n"]
        server = HTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        local = "http://127.0.0.1:%d/" % server.server_address[1]
        out["bench"] = {"proxied_p50_us": per_get_us(event["bench"]["url"], n, True),
                        "direct_p50_us": per_get_us(local, n, False)}
        server.shutdown()
    return out
"#;

/// A loopback HTTP server on `ip`: `/redirect?to=URL` answers 302 to URL, anything
/// else 200 with `body`.
async fn origin(ip: &str, body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&seen);
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let answer = match target.split_once("/redirect?to=") {
                    Some((_, to)) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\
                         Connection: close\r\n\r\n"
                    ),
                    None => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

async fn call(server: &Server, name: &str, event: &Value) -> Value {
    let response = invoke(server, name, &event.to_string()).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", server.log());
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn python_reaches_only_what_its_allow_outbound_names() {
    if !docker_available() {
        return;
    }
    let allowed = origin("127.0.0.2", "from the allowed server").await;
    let other = origin("127.0.0.3", "from the other server").await;
    let server = Server::start();
    // `localhost` is listed too: a name that resolves to a loopback address is still
    // refused (DNS rebinding), only a literal address reaches one.
    let list = format!("{allowed},localhost:{}", allowed.port());
    deploy_python(
        &server,
        "fetch",
        tar_gz(&[("main.py", FETCH.as_bytes())]),
        &format!("&allow_outbound={list}"),
    )
    .await;
    let event = json!({
        "get": {
            "allowed": format!("http://{allowed}/"),
            "other": format!("http://{other}/"),
            "rebound": format!("http://localhost:{}/", allowed.port()),
            "redirected": format!("http://{allowed}/redirect?to=http://{other}/"),
        },
        "nofollow": {"redirect": format!("http://{allowed}/redirect?to=http://{other}/")},
        "direct": {
            "direct_loopback": ["127.0.0.2", allowed.port()],
            "direct_elsewhere": ["192.0.2.1", 80],
        },
    });
    let denied_before = metric(&server, "newt_egress_denied_total{backend=\"docker\"}").await;
    let out = call(&server, "fetch", &event).await;
    assert_eq!(out["socket"], true, "{out}");
    assert!(
        out["proxy"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{out}"
    );
    assert_eq!(out["allowed"], json!([200, "from the allowed server"]));
    for (name, reason) in [
        ("other", "not in this function's allow_outbound list"),
        ("rebound", "resolves only to non-public addresses"),
        ("redirected", "not in this function's allow_outbound list"),
    ] {
        assert_eq!(out[name][0], 403, "{name}: {out}");
        let body = out[name][1].as_str().unwrap();
        assert!(
            body.starts_with("newt egress: ") && body.contains(reason),
            "{name}: {body}"
        );
    }
    // The redirect itself came through: it is following it that the proxy refused.
    assert_eq!(out["redirect"][0], 302, "{out}");
    // No way around the proxy: 127.0.0.2 inside the container is its own loopback
    // (nothing listens there), and nothing else has a route.
    assert_eq!(out["direct_loopback"], "ECONNREFUSED", "{out}");
    assert_eq!(out["direct_elsewhere"], "ENETUNREACH", "{out}");
    let containers = containers_of(&server);
    assert!(!containers.is_empty());
    for id in containers {
        let inspect = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.HostConfig.NetworkMode}}", &id])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "none");
    }
    let denied = metric(&server, "newt_egress_denied_total{backend=\"docker\"}").await;
    assert_eq!(denied - denied_before, 3, "other, rebound and redirected");
    assert!(metric(&server, "newt_egress_allowed_total{backend=\"docker\"}").await >= 2);

    // What the proxy path adds to one GET: the same urllib GET through the forwarder
    // and the proxy to the host, and to a server inside the container, 200 each.
    let bench = call(
        &server,
        "fetch",
        &json!({"bench": {"n": 200, "url": format!("http://{allowed}/")}}),
    )
    .await;
    let (proxied, direct) = (
        bench["bench"]["proxied_p50_us"].as_f64().unwrap(),
        bench["bench"]["direct_p50_us"].as_f64().unwrap(),
    );
    println!(
        "egress: urllib GET p50 through the proxy {proxied:.0} µs, inside the container \
         without it {direct:.0} µs: the proxy path adds {:.0} µs",
        proxied - direct
    );
}

#[tokio::test]
async fn python_without_a_list_has_no_proxy_and_no_way_out() {
    if !docker_available() {
        return;
    }
    let allowed = origin("127.0.0.2", "unreachable").await;
    let server = Server::start();
    deploy_python(
        &server,
        "offline",
        tar_gz(&[("main.py", FETCH.as_bytes())]),
        "",
    )
    .await;
    let out = call(
        &server,
        "offline",
        &json!({
            "get": {"allowed": format!("http://{allowed}/")},
            "direct": {"direct_elsewhere": ["192.0.2.1", 80]},
        }),
    )
    .await;
    assert_eq!(out["socket"], false, "{out}");
    assert_eq!(out["proxy"], Value::Null, "{out}");
    assert_eq!(out["allowed"][0], 0, "{out}");
    assert_eq!(out["direct_elsewhere"], "ENETUNREACH", "{out}");
}
