//! wasi:http components (the `wasi:http/proxy` world) as wasm functions, driven through
//! the invoker with the real wasmtime engine: the bench's `http-hello` component (the
//! same .wasm `wasmtime serve` runs) and `tests/fixtures/http-probe`, both built here
//! for wasm32-wasip2 with cargo. Without that target the tests say so and pass, except
//! in CI (`CI` set), where scripts/setup.sh installs it and its absence is a failure.

use bytes::Bytes;
use newt_runtime::{
    AllowList, CallOutcome, CallRequest, CallResult, Cas, EgressStats, Error, FunctionSpec,
    HttpRequest, Invoker, Limits, Policy, WasmConfig, WasmExecutor,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HELLO_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../host/bench-fixtures/http-hello"
);
const PROBE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/http-probe");

/// A component's path, or why it could not be built.
type Built = Result<PathBuf, String>;

/// Builds a component crate for wasm32-wasip2 (once per test process) and returns its
/// bytes, or `None` (with the reason printed) when the target is missing outside CI.
fn component(dir: &str, artifact: &str) -> Option<Vec<u8>> {
    static BUILT: OnceLock<Mutex<Vec<(String, Built)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|(d, _)| d == dir) {
        let result = build(Path::new(dir), artifact);
        built.push((dir.to_string(), result));
    }
    let (_, result) = built.iter().find(|(d, _)| d == dir).unwrap();
    match result {
        Ok(path) => Some(std::fs::read(path).unwrap()),
        Err(why) if std::env::var_os("CI").is_none() && why.contains("wasm32-wasip2") => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

fn build(dir: &Path, artifact: &str) -> Built {
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    let lib = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib/wasm32-wasip2/lib");
    if std::fs::read_dir(&lib).map_or(true, |mut e| e.next().is_none()) {
        return Err("the wasm32-wasip2 target is not installed (scripts/setup.sh adds it)".into());
    }
    // Built from a copy, so the source tree gets no Cargo.lock or target directory.
    let name = dir.file_name().unwrap();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("components")
        .join(name);
    std::fs::create_dir_all(work.join("src")).unwrap();
    for file in ["Cargo.toml", "src/lib.rs"] {
        let text = std::fs::read(dir.join(file)).unwrap();
        if std::fs::read(work.join(file)).ok().as_ref() != Some(&text) {
            std::fs::write(work.join(file), text).unwrap();
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
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
            "building {} for wasm32-wasip2 failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(work.join("target/wasm32-wasip2/release").join(artifact))
}

fn hello() -> Option<Vec<u8>> {
    component(HELLO_DIR, "http_hello.wasm")
}

fn probe() -> Option<Vec<u8>> {
    component(PROBE_DIR, "http_probe.wasm")
}

struct Harness {
    _home: tempfile::TempDir,
    invoker: Invoker,
    egress: Arc<EgressStats>,
}

impl Harness {
    fn new() -> Harness {
        let home = tempfile::tempdir().unwrap();
        let cas = Cas::open(home.path().join("cas")).unwrap();
        let wasm = WasmExecutor::new(WasmConfig {
            cache_dir: home.path().join("cache"),
            pooling: true,
        })
        .unwrap();
        let egress = wasm.egress_stats().clone();
        Harness {
            invoker: Invoker::new(cas).with_executor(wasm),
            _home: home,
            egress,
        }
    }

    fn spec(&self, name: &str, bytes: &[u8], limits: Limits) -> Arc<FunctionSpec> {
        self.spec_allowing(name, bytes, limits, &[])
    }

    fn spec_allowing(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        allow: &[String],
    ) -> Arc<FunctionSpec> {
        let digest = self.invoker.cas().put(bytes).unwrap();
        Arc::new(FunctionSpec {
            name: name.into(),
            version: 1,
            runtime: "wasm".into(),
            digest: digest.to_string(),
            limits,
            policy: Policy::default(),
            env: Default::default(),
            allow_outbound: Arc::new(AllowList::parse(allow).unwrap()),
        })
    }

    async fn call(
        &self,
        spec: &Arc<FunctionSpec>,
        input: &str,
        http: Option<HttpRequest>,
    ) -> CallOutcome {
        self.invoker
            .invoke(
                spec,
                CallRequest {
                    call_id: "c1".into(),
                    input: Bytes::from(input.to_string()),
                    http: http.map(Arc::new),
                },
                Instant::now() + spec.limits.timeout(),
            )
            .await
            .unwrap()
    }
}

fn get(path: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: path.into(),
        ..HttpRequest::default()
    }
}

fn header<'a>(outcome: &'a CallOutcome, name: &str) -> Option<&'a str> {
    let http = outcome.http.as_ref()?;
    http.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn text(outcome: &CallOutcome) -> String {
    String::from_utf8_lossy(&outcome.output).into_owned()
}

#[tokio::test]
async fn the_bench_hello_component_answers_a_plain_invoke() {
    let Some(bytes) = hello() else { return };
    let h = Harness::new();
    let spec = h.spec("hello-http", &bytes, Limits::default());
    for _ in 0..3 {
        let outcome = h.call(&spec, "{}", None).await;
        assert_eq!(outcome.result, CallResult::Done, "logs: {:?}", outcome.logs);
        assert_eq!(text(&outcome), r#"{"greeting":"Hello, world!"}"#);
        assert_eq!(outcome.http.as_ref().map(|r| r.status), Some(200));
        assert_eq!(header(&outcome, "content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn a_component_sees_the_request_and_sets_status_and_headers() {
    let Some(bytes) = probe() else { return };
    let h = Harness::new();
    let spec = h.spec("probe", &bytes, Limits::default());

    // A plain invoke is `POST /` with the input as a JSON body.
    let plain = h.call(&spec, r#"{"n":1}"#, None).await;
    assert_eq!(plain.result, CallResult::Done, "logs: {:?}", plain.logs);
    assert_eq!(
        text(&plain),
        r#"{"method":"POST","path":"/","content_type":"application/json","x_probe_in":"","body":"{\"n\":1}"}"#
    );
    assert_eq!(header(&plain, "x-probe"), Some("yes"));

    // A routed call carries method, path, query and headers through.
    let routed = h
        .call(
            &spec,
            "raw body",
            Some(HttpRequest {
                method: "PUT".into(),
                path: "/items/7".into(),
                query: "full=1".into(),
                headers: vec![
                    ("content-type".into(), "text/plain".into()),
                    ("x-probe-in".into(), "hello".into()),
                ],
            }),
        )
        .await;
    assert_eq!(routed.result, CallResult::Done, "logs: {:?}", routed.logs);
    assert_eq!(
        text(&routed),
        r#"{"method":"PUT","path":"/items/7?full=1","content_type":"text/plain","x_probe_in":"hello","body":"raw body"}"#
    );

    // The component's status is the call's HTTP status; the call itself succeeded.
    let teapot = h.call(&spec, "", Some(get("/status/418"))).await;
    assert_eq!(teapot.result, CallResult::Done);
    assert_eq!(teapot.http.as_ref().map(|r| r.status), Some(418));
    assert_eq!(text(&teapot), "as asked");
}

#[tokio::test]
async fn component_failures_fail_the_call_with_the_reason() {
    let Some(bytes) = probe() else { return };
    let h = Harness::new();
    let limits = Limits {
        max_output_bytes: 10_000,
        ..Limits::default()
    };
    let spec = h.spec("probe", &bytes, limits);

    let fits = h.call(&spec, "", Some(get("/big/10000"))).await;
    assert_eq!(fits.result, CallResult::Done);
    assert_eq!(fits.output.len(), 10_000);

    let big = h.call(&spec, "", Some(get("/big/100000"))).await;
    match &big.result {
        CallResult::Failed(m) => assert!(m.contains("output exceeds the limit of 10000"), "{m}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(big.output.is_empty(), "no partial body is returned");

    let trap = h.call(&spec, "", Some(get("/trap"))).await;
    match &trap.result {
        CallResult::Failed(m) => {
            assert!(m.contains("trap"), "{m}");
            assert!(m.contains("the probe was asked to trap"), "{m}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    let silent = h.call(&spec, "", Some(get("/silent"))).await;
    match &silent.result {
        CallResult::Failed(m) => assert!(m.contains("without setting a response"), "{m}"),
        other => panic!("expected a failure, got {other:?}"),
    }

    // Each call had a fresh instance: the failures left nothing behind.
    let after = h.call(&spec, "", Some(get("/status/201"))).await;
    assert_eq!(after.http.as_ref().map(|r| r.status), Some(201));
}

#[tokio::test(flavor = "current_thread")]
async fn a_looping_component_ends_at_its_deadline_and_others_keep_running() {
    let Some(bytes) = probe() else { return };
    let h = Arc::new(Harness::new());
    let looping = h.spec(
        "looping",
        &bytes,
        Limits {
            timeout_ms: 400,
            ..Limits::default()
        },
    );
    let other = h.spec("other", &bytes, Limits::default());
    // One worker thread: the looping guest must yield for the other call to run.
    let stuck = tokio::spawn({
        let (h, looping) = (h.clone(), looping.clone());
        async move { h.call(&looping, "", Some(get("/loop"))).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = h.call(&other, "", Some(get("/status/200"))).await;
    assert_eq!(answer.result, CallResult::Done);
    let started = Instant::now();
    let outcome = stuck.await.unwrap();
    assert!(
        matches!(&outcome.result, CallResult::Timeout(m) if m.contains("400 ms")),
        "{:?}",
        outcome.result
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn components_that_are_not_wasi_http_proxies_are_refused() {
    let h = Harness::new();
    // A component exporting nothing: not the wasi:http/proxy world.
    let empty = wat::parse_str("(component)").unwrap();
    let err = h
        .invoker
        .validate(&h.spec("empty", &empty, Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBundle(m) if m.contains("wasi:http/proxy")),
        "{err}"
    );
    // One importing something the proxy world does not have.
    let foreign = wat::parse_str(
        r#"(component (import "example:launch/rockets" (instance (export "fire" (func)))))"#,
    )
    .unwrap();
    let err = h
        .invoker
        .validate(&h.spec("foreign", &foreign, Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBundle(m) if m.contains("wasi:http/proxy")),
        "{err}"
    );
}

#[tokio::test]
async fn modules_and_components_run_side_by_side() {
    let Some(bytes) = hello() else { return };
    let h = Harness::new();
    let echo = wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/echo.wat"
    ))
    .unwrap();
    let module = h.spec("echo", &echo, Limits::default());
    let component = h.spec("hello-http", &bytes, Limits::default());
    let a = h.call(&module, "ping", None).await;
    let b = h.call(&component, "", None).await;
    assert_eq!(
        (&a.result, &a.output[..]),
        (&CallResult::Done, &b"ping"[..])
    );
    assert!(a.http.is_none(), "a p1 module gives no HTTP answer");
    assert_eq!(b.result, CallResult::Done);
    assert_eq!(text(&b), r#"{"greeting":"Hello, world!"}"#);
}

#[tokio::test]
async fn compiled_components_are_reused_from_the_disk_cache() {
    let Some(bytes) = hello() else { return };
    let home = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let wasm = WasmExecutor::new(WasmConfig {
            cache_dir: home.path().join("cache"),
            pooling: true,
        })
        .unwrap();
        let cas = Cas::open(home.path().join("cas")).unwrap();
        let digest = cas.put(&bytes).unwrap();
        let spec = FunctionSpec {
            name: "hello-http".into(),
            version: 1,
            runtime: "wasm".into(),
            digest: digest.to_string(),
            limits: Limits::default(),
            policy: Policy::default(),
            env: Default::default(),
            allow_outbound: Default::default(),
        };
        let prepared = newt_runtime::Executor::prepare(&wasm, &spec, &cas.path(&digest))
            .await
            .unwrap();
        assert!(prepared.is_component());
        assert_eq!(prepared.compiled(), round == 0, "round {round}");
    }
}

/// A loopback HTTP server that answers every request with `body`, counting requests.
async fn serve(body: &'static str) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (address, served)
}

#[tokio::test]
async fn outgoing_requests_follow_the_allow_list() {
    let Some(bytes) = probe() else { return };
    let h = Harness::new();
    let (allowed, allowed_hits) = serve("from the allowed server").await;
    let (denied, denied_hits) = serve("must not be reached").await;
    let spec = h.spec_allowing("probe", &bytes, Limits::default(), &[allowed.to_string()]);

    let ok = h
        .call(&spec, "", Some(get(&format!("/fetch?http://{allowed}/x"))))
        .await;
    assert_eq!(ok.result, CallResult::Done, "logs: {:?}", ok.logs);
    assert_eq!(text(&ok), "fetched 200: from the allowed server");
    assert_eq!(allowed_hits.load(Ordering::Relaxed), 1);

    let refused = h
        .call(&spec, "", Some(get(&format!("/fetch?http://{denied}/x"))))
        .await;
    assert_eq!(
        refused.result,
        CallResult::Done,
        "the guest handles the error"
    );
    assert_eq!(refused.http.as_ref().map(|r| r.status), Some(502));
    assert_eq!(text(&refused), "refused: ErrorCode::HttpRequestDenied");
    let logs = String::from_utf8_lossy(&refused.logs);
    assert!(
        logs.contains(&format!(
            "{denied} is not in this function's allow_outbound list"
        )),
        "{logs}"
    );
    assert_eq!(denied_hits.load(Ordering::Relaxed), 0, "nothing reached it");

    // A name is checked by what it resolves to: localhost is not a public address.
    let by_name = h
        .call(
            &spec,
            "",
            Some(get(&format!(
                "/fetch?http://localhost:{}/x",
                allowed.port()
            ))),
        )
        .await;
    assert_eq!(text(&by_name), "refused: ErrorCode::HttpRequestDenied");
    assert_eq!(allowed_hits.load(Ordering::Relaxed), 1);

    // With no list at all, nothing goes out.
    let closed = h.spec("closed", &bytes, Limits::default());
    let none = h
        .call(
            &closed,
            "",
            Some(get(&format!("/fetch?http://{allowed}/x"))),
        )
        .await;
    assert_eq!(text(&none), "refused: ErrorCode::HttpRequestDenied");
    assert_eq!(allowed_hits.load(Ordering::Relaxed), 1);

    assert_eq!(h.egress.allowed.load(Ordering::Relaxed), 1);
    assert_eq!(h.egress.denied.load(Ordering::Relaxed), 3);
}
