//! wasi:http components through the real server: the bench's `http-hello` component
//! (host/bench-fixtures/http-hello, built here for wasm32-wasip2: the same .wasm
//! `wasmtime serve` runs) deploys with `PUT /v1/functions/{name}` like a p1 module and
//! answers `POST /v1/functions/{name}/invoke` with its response body; a component that
//! is not a wasi:http proxy is refused with 422. Outgoing https (issue 14): the runtime
//! tests' `http-probe` component fetches from a TLS server this test starts on 127.0.0.2
//! with a certificate made here, trusted through `NEWT_EGRESS_CA_FILE` or not at all.
//! Without the wasm32-wasip2 target the component tests say so and pass, except in CI
//! (`CI` set), where they fail.

use crate::support::{deploy, error_of, header, http, invoke, metric, wait_for_call};
use newt_tests::{Server, fixture};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

const GREETING: &str = r#"{"greeting":"Hello, world!"}"#;

/// The http-hello component, built for wasm32-wasip2 the way `newt bench` builds it
/// (once, into its cache).
async fn hello_component() -> Option<Vec<u8>> {
    static BUILT: tokio::sync::OnceCell<Result<PathBuf, String>> =
        tokio::sync::OnceCell::const_new();
    let built = BUILT
        .get_or_init(|| async {
            newt_host::bench::serve::build_component()
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await;
    match built {
        Ok(path) => Some(std::fs::read(path).unwrap()),
        Err(why) if std::env::var_os("CI").is_none() && why.contains("wasm32-wasip2") => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

#[tokio::test]
async fn a_wasi_http_component_deploys_and_answers_invoke() {
    let Some(component) = hello_component().await else {
        return;
    };
    let server = Server::start();
    let deployed = deploy(&server, "hello-http", &component, "").await;
    assert_eq!(deployed["runtime"], "wasm", "{deployed}");

    for _ in 0..3 {
        let response = invoke(&server, "hello-http", "{}").await;
        assert_eq!(response.status().as_u16(), 200);
        assert!(!header(&response, "x-newt-call-id").is_empty());
        assert_eq!(response.text().await.unwrap(), GREETING);
    }

    // On its route the component's own status and headers come back too.
    let routed = http()
        .get(server.url("/fn/hello-http/any/path?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status().as_u16(), 200);
    assert_eq!(header(&routed, "content-type"), "application/json");
    assert_eq!(routed.text().await.unwrap(), GREETING);

    // A p1 module beside it on the same server keeps working.
    deploy(&server, "echo", fixture!("echo"), "").await;
    let echoed = invoke(&server, "echo", "same engine").await;
    assert_eq!(echoed.status().as_u16(), 200);
    assert_eq!(echoed.text().await.unwrap(), "same engine");
}

#[tokio::test]
async fn a_component_that_is_not_a_wasi_http_proxy_is_refused() {
    let server = Server::start();
    // The smallest component: magic, version 0x0d, layer 1, nothing inside. It exports
    // no wasi:http/incoming-handler.
    let empty: &[u8] = b"\0asm\x0d\x00\x01\x00";
    let response = http()
        .put(server.url("/v1/functions/not-a-proxy"))
        .body(empty.to_vec())
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (422, "invalid_bundle"),
        "{message}"
    );
    assert!(message.contains("wasi:http/proxy"), "{message}");
}

/// The same .wasm under `wasmtime serve` answers the same body, where the wasmtime
/// CLI is installed (newt does not need it; `newt bench` compares the two).
#[tokio::test]
async fn the_same_component_answers_alike_under_wasmtime_serve() {
    let Some(component) = hello_component().await else {
        return;
    };
    let Ok(version) = Command::new("wasmtime").arg("--version").output() else {
        eprintln!("skipped: the wasmtime CLI is not installed");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("http_hello.wasm");
    std::fs::write(&wasm, &component).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new("wasmtime")
        .arg("serve")
        // The component imports wasi:cli (the `wasi` crate's proxy world does, for
        // stdio): `wasmtime serve` links it only when asked, as `newt bench` does.
        .args(["-S", "cli"])
        .arg(format!("--addr=127.0.0.1:{port}"))
        .arg(&wasm)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match http().get(format!("http://127.0.0.1:{port}/")).send().await {
            Ok(r) => break r.text().await.unwrap(),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                let _ = child.kill();
                panic!("wasmtime serve did not answer in 30 s: {e}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body, GREETING);

    let server = Server::start();
    deploy(&server, "hello-http", &component, "").await;
    let response = invoke(&server, "hello-http", "").await;
    assert_eq!(response.text().await.unwrap(), body);
}

/// The runtime tests' `http-probe` component (its `/fetch?{url}` makes an outgoing
/// request and answers what came back), built for wasm32-wasip2 once per test process.
async fn probe_component() -> Option<Vec<u8>> {
    static BUILT: tokio::sync::OnceCell<Result<PathBuf, String>> =
        tokio::sync::OnceCell::const_new();
    let built = BUILT
        .get_or_init(|| async { tokio::task::spawn_blocking(build_probe).await.unwrap() })
        .await;
    match built {
        Ok(path) => Some(std::fs::read(path).unwrap()),
        Err(why) if std::env::var_os("CI").is_none() && why.contains("wasm32-wasip2") => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

fn build_probe() -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/http-probe");
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    let lib = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib/wasm32-wasip2/lib");
    if !std::fs::read_dir(&lib).is_ok_and(|mut e| e.next().is_some()) {
        return Err("the wasm32-wasip2 target is not installed (scripts/setup.sh adds it)".into());
    }
    // Built from a copy, so the source tree gets no Cargo.lock or target directory.
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-components/http-probe");
    std::fs::create_dir_all(work.join("src")).unwrap();
    for file in ["Cargo.toml", "src/lib.rs"] {
        let text = std::fs::read(source.join(file)).unwrap();
        if std::fs::read(work.join(file)).ok().as_ref() != Some(&text) {
            std::fs::write(work.join(file), text).unwrap();
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(work.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(work.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building http-probe for wasm32-wasip2 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(work.join("target/wasm32-wasip2/release/http_probe.wasm"))
}

/// A TLS server on loopback with a self-signed certificate for its own address.
struct TlsOrigin {
    address: std::net::SocketAddr,
    /// The certificate, as the PEM file a CA file holds.
    cert_pem: String,
    /// TCP connections accepted (TLS or not).
    connections: Arc<AtomicU64>,
    /// Requests answered over a completed TLS handshake.
    served: Arc<AtomicU64>,
}

/// Starts a TLS server on `ip` that answers every request with `body`, with a fresh
/// self-signed certificate whose subject alternative name is `ip` (what rustls checks
/// for an `https://IP:port` URL).
async fn tls_origin(ip: &str, body: &'static str) -> TlsOrigin {
    let made = rcgen::generate_simple_self_signed(vec![ip.to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (connections, served) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (accepted, answered) = (connections.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let (acceptor, answered) = (acceptor.clone(), answered.clone());
            tokio::spawn(async move {
                let deadline = Duration::from_secs(10);
                let Ok(Ok(mut tls)) = tokio::time::timeout(deadline, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match tokio::time::timeout(deadline, tls.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                answered.fetch_add(1, Ordering::Relaxed);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsOrigin {
        address,
        cert_pem: made.cert.pem(),
        connections,
        served,
    }
}

/// Deploys the probe allowed to reach `allowed` and has it fetch `url` on its route;
/// returns the component's status and body and the call's record.
async fn fetch_through(
    server: &Server,
    allowed: &str,
    url: &str,
) -> (u16, String, serde_json::Value) {
    let Some(probe) = probe_component().await else {
        unreachable!("the callers skip without the component");
    };
    deploy(
        server,
        "probe",
        &probe,
        &format!("?allow_outbound={allowed}"),
    )
    .await;
    let response = http()
        .get(server.url(&format!("/fn/probe/fetch?{url}")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let call_id = header(&response, "x-newt-call-id");
    let body = response.text().await.unwrap();
    let record = wait_for_call(server, &call_id, 10).await;
    (status, body, record)
}

const WASM_ALLOWED: &str = "newt_egress_allowed_total{backend=\"wasm\"}";
const WASM_DENIED: &str = "newt_egress_denied_total{backend=\"wasm\"}";
const WASM_FAILED: &str = "newt_egress_failed_total{backend=\"wasm\"}";

#[tokio::test]
async fn a_component_fetches_https_from_an_allowed_host_whose_ca_newt_trusts() {
    if probe_component().await.is_none() {
        return;
    }
    let origin = tls_origin("127.0.0.2", "over tls").await;
    let other = tls_origin("127.0.0.3", "must not be reached").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &origin.cert_pem).unwrap();
    let server = Server::start_with_env(&[], &[("NEWT_EGRESS_CA_FILE", ca_file.to_str().unwrap())]);

    let allowed = origin.address.to_string();
    let url = format!("https://{allowed}/x");
    let (status, body, record) = fetch_through(&server, &allowed, &url).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "fetched 200: over tls"),
        "{record}"
    );
    assert_eq!(origin.served.load(Ordering::Relaxed), 1);
    assert_eq!(metric(&server, WASM_ALLOWED).await, 1);

    // https to a host not in the list is refused by the allow-list, before any
    // connection (and so before any TLS): the other server never sees a connection.
    let url = format!("https://{}/x", other.address);
    let (status, body, record) = fetch_through(&server, &allowed, &url).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "refused: ErrorCode::HttpRequestDenied")
    );
    let logs = record["logs"].as_str().unwrap();
    assert!(
        logs.contains(&format!(
            "{} is not in this function's allow_outbound list",
            other.address
        )),
        "{logs}"
    );
    assert_eq!(other.connections.load(Ordering::Relaxed), 0);
    assert_eq!(metric(&server, WASM_DENIED).await, 1);
    assert_eq!(metric(&server, WASM_FAILED).await, 0);
}

#[tokio::test]
async fn an_https_server_newt_does_not_trust_fails_the_request_on_its_certificate() {
    if probe_component().await.is_none() {
        return;
    }
    let origin = tls_origin("127.0.0.2", "must not be read").await;
    // Mozilla's roots only: the self-signed certificate verifies against none of them.
    let server = Server::start();
    let allowed = origin.address.to_string();
    let url = format!("https://{allowed}/x");
    let (status, body, record) = fetch_through(&server, &allowed, &url).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "refused: ErrorCode::TlsCertificateError"),
        "{record}"
    );
    let logs = record["logs"].as_str().unwrap();
    assert!(
        logs.contains(&format!(
            "outgoing request to 127.0.0.2:{} failed: TLS handshake failed",
            origin.address.port()
        )) && logs.contains("certificate"),
        "{logs}"
    );
    // The allow-list let it through and newt connected; the handshake stopped it.
    assert_eq!(origin.connections.load(Ordering::Relaxed), 1);
    assert_eq!(origin.served.load(Ordering::Relaxed), 0);
    assert_eq!(metric(&server, WASM_FAILED).await, 1);
    assert_eq!(metric(&server, WASM_ALLOWED).await, 0);
}

#[tokio::test]
async fn an_unusable_ca_file_fails_https_requests_with_the_reason_in_the_call_logs() {
    if probe_component().await.is_none() {
        return;
    }
    let origin = tls_origin("127.0.0.2", "must not be read").await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let server = Server::start_with_env(&[], &[("NEWT_EGRESS_CA_FILE", ca_file.to_str().unwrap())]);
    let allowed = origin.address.to_string();
    let url = format!("https://{allowed}/x");
    let (status, body, record) = fetch_through(&server, &allowed, &url).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "refused: ErrorCode::ConfigurationError"),
        "{record}"
    );
    let logs = record["logs"].as_str().unwrap();
    assert!(
        logs.contains(&format!(
            "NEWT_EGRESS_CA_FILE={} holds no PEM certificate",
            ca_file.display()
        )),
        "{logs}"
    );
    // Nothing was opened for a request that could not be verified.
    assert_eq!(origin.connections.load(Ordering::Relaxed), 0);
    assert_eq!(metric(&server, WASM_FAILED).await, 1);
}

/// On a route a component gets the request itself, not the JSON envelope p1 modules
/// get: its method, the path after the route's prefix with the query, headers and the
/// raw body; its own status and headers come back.
#[tokio::test]
async fn a_component_on_a_route_sees_the_request_itself() {
    let Some(probe) = probe_component().await else {
        return;
    };
    let server = Server::start();
    deploy(&server, "probe", &probe, "?route=/api/probe").await;
    for (url, path) in [
        ("/api/probe/items/7?full=1", "/items/7?full=1"),
        ("/fn/probe/items/7?full=1", "/items/7?full=1"),
    ] {
        let response = http()
            .put(server.url(url))
            .header("content-type", "text/plain")
            .header("x-probe-in", "seen")
            .body("raw body")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(header(&response, "x-probe"), "yes");
        let seen: serde_json::Value = response.json().await.unwrap();
        assert_eq!(seen["method"], "PUT", "{seen}");
        assert_eq!(seen["path"], path, "{seen}");
        assert_eq!(seen["content_type"], "text/plain", "{seen}");
        assert_eq!(seen["x_probe_in"], "seen", "{seen}");
        assert_eq!(seen["body"], "raw body", "{seen}");
    }
    let teapot = http()
        .get(server.url("/api/probe/status/418"))
        .send()
        .await
        .unwrap();
    assert_eq!(teapot.status(), 418);
}
