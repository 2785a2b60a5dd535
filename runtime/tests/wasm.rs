//! The wasm executor driven through the invoker, with the real wasmtime engine and WAT
//! guests from `tests/fixtures`.

use bytes::Bytes;
use newt_runtime::{
    CallOutcome, CallRequest, CallResult, Cas, Error, FunctionSpec, Invoker, Limits, Policy,
    StartKind, WasmConfig, WasmExecutor,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Harness {
    _home: tempfile::TempDir,
    invoker: Invoker,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

impl Harness {
    fn new() -> Harness {
        Harness::with_pooling(true)
    }

    fn with_pooling(pooling: bool) -> Harness {
        let home = tempfile::tempdir().unwrap();
        let cas = Cas::open(home.path().join("cas")).unwrap();
        let wasm = WasmExecutor::new(WasmConfig {
            cache_dir: home.path().join("cache"),
            pooling,
        })
        .unwrap();
        Harness {
            invoker: Invoker::new(cas).with_executor(wasm),
            _home: home,
        }
    }

    fn spec(&self, name: &str, bytes: &[u8], limits: Limits) -> Arc<FunctionSpec> {
        let digest = self.invoker.cas().put(bytes).unwrap();
        Arc::new(FunctionSpec {
            name: name.into(),
            version: 1,
            runtime: "wasm".into(),
            digest: digest.to_string(),
            limits,
            policy: Policy::default(),
            env: Default::default(),
            allow_outbound: Default::default(),
        })
    }

    async fn call(&self, spec: &Arc<FunctionSpec>, input: &str) -> CallOutcome {
        self.invoker
            .invoke(
                spec,
                CallRequest {
                    call_id: "c1".into(),
                    input: Bytes::from(input.to_string()),
                    http: None,
                },
                Instant::now() + spec.limits.timeout(),
            )
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn echo_returns_input_and_logs_first_call_cold_then_warm() {
    let h = Harness::new();
    let spec = h.spec("echo", &fixture("echo"), Limits::default());
    let first = h.call(&spec, "{\"x\":1}").await;
    assert_eq!(first.result, CallResult::Done);
    assert_eq!(&first.output[..], b"{\"x\":1}");
    assert_eq!(&first.logs[..], b"echo\n");
    assert_eq!(first.start, StartKind::Cold);
    let second = h.call(&spec, "again").await;
    assert_eq!(&second.output[..], b"again");
    assert_eq!(second.start, StartKind::Warm);
}

#[tokio::test]
async fn error_exit_reports_stderr_tail() {
    let h = Harness::new();
    let spec = h.spec("fail", &fixture("fail"), Limits::default());
    let out = h.call(&spec, "").await;
    assert_eq!(out.result, CallResult::Failed("something broke".into()));
}

#[tokio::test]
async fn trap_is_reported_with_its_message() {
    let h = Harness::new();
    let spec = h.spec("trap", &fixture("trap"), Limits::default());
    match h.call(&spec, "").await.result {
        CallResult::Failed(msg) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn memory_growth_stops_at_the_limit() {
    // The on-demand allocator (`--no-pooling`, or the fallback) enforces the same limit.
    for pooling in [true, false] {
        let h = Harness::with_pooling(pooling);
        let limits = Limits {
            memory_mb: 8,
            ..Limits::default()
        };
        let spec = h.spec("grow", &fixture("grow"), limits);
        match h.call(&spec, "").await.result {
            CallResult::Failed(msg) => {
                assert!(
                    msg.contains("memory limit of 8 MiB"),
                    "pooling {pooling}: {msg}"
                )
            }
            other => panic!("pooling {pooling}: expected a failure, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn modules_with_several_memories_are_refused_whatever_the_allocator() {
    // Two memories of 4 MiB each would pass a per-memory limit of 6 MiB.
    let two =
        wat::parse_str(r#"(module (memory 64) (memory $b 64) (func (export "_start")))"#).unwrap();
    for pooling in [true, false] {
        let h = Harness::with_pooling(pooling);
        let spec = h.spec("two", &two, Limits::default());
        let err = h.invoker.validate(&spec).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidBundle(m) if m.contains("memories")),
            "pooling {pooling}: {err}"
        );
    }
}

#[tokio::test]
async fn busy_loop_and_host_sleep_both_hit_the_deadline() {
    let h = Harness::new();
    let limits = Limits {
        timeout_ms: 200,
        ..Limits::default()
    };
    for name in ["loop", "sleep"] {
        let spec = h.spec(name, &fixture(name), limits.clone());
        let out = h.call(&spec, "").await;
        assert!(
            matches!(out.result, CallResult::Timeout(_)),
            "{name}: {:?}",
            out.result
        );
    }
}

#[tokio::test]
async fn output_past_the_cap_fails_the_call() {
    let h = Harness::new();
    let spec = h.spec("big", &fixture("big-output"), Limits::default());
    match h.call(&spec, "").await.result {
        CallResult::Failed(msg) => assert!(msg.contains("output exceeds the limit"), "{msg}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_bundles_are_refused_with_the_reason() {
    let h = Harness::new();
    let not_wasm = h.spec("x", b"#!/bin/sh\necho hi\n", Limits::default());
    let err = h.invoker.validate(&not_wasm).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBundle(m) if m.contains("magic")),
        "{err}"
    );

    let no_start = wat::parse_str("(module (func (export \"main\")))").unwrap();
    let err = h
        .invoker
        .validate(&h.spec("y", &no_start, Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBundle(m) if m.contains("_start")),
        "{err}"
    );

    let foreign =
        wat::parse_str("(module (import \"env\" \"launch\" (func)) (func (export \"_start\")))")
            .unwrap();
    let err = h
        .invoker
        .validate(&h.spec("z", &foreign, Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidBundle(m) if m.contains("env::launch")),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_runtime_is_an_error() {
    let h = Harness::new();
    let mut spec = h.spec("echo", &fixture("echo"), Limits::default());
    Arc::make_mut(&mut spec).runtime = "cobol".into();
    let err = h.invoker.validate(&spec).await.unwrap_err();
    assert!(matches!(err, Error::UnknownRuntime(r) if r == "cobol"));
}

#[tokio::test]
async fn newer_version_replaces_the_old_and_old_spec_cannot_bring_it_back() {
    let h = Harness::new();
    let v1 = h.spec("f", &fixture("echo"), Limits::default());
    let mut v2 = h.spec("f", &fixture("fail"), Limits::default());
    Arc::make_mut(&mut v2).version = 2;
    assert_eq!(h.call(&v1, "a").await.result, CallResult::Done);
    assert!(matches!(
        h.call(&v2, "a").await.result,
        CallResult::Failed(_)
    ));
    // A call that read v1 before the redeploy still runs the newest version.
    assert!(matches!(
        h.call(&v1, "a").await.result,
        CallResult::Failed(_)
    ));
}

#[tokio::test]
async fn compiled_modules_are_reused_from_the_disk_cache() {
    let home = tempfile::tempdir().unwrap();
    let bytes = fixture("echo");
    for round in 0..2 {
        let wasm = WasmExecutor::new(WasmConfig {
            cache_dir: home.path().join("cache"),
            pooling: true,
        })
        .unwrap();
        let cas = Cas::open(home.path().join("cas")).unwrap();
        let digest = cas.put(&bytes).unwrap();
        let spec = FunctionSpec {
            name: "echo".into(),
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
        assert_eq!(prepared.compiled(), round == 0, "round {round}");
    }
}

/// A start function that never ends: instantiation runs it, so it must yield and stop
/// at the call's deadline like the function's own code, without pinning a worker.
const LOOPING_START: &str =
    r#"(module (memory 1) (func $s (loop br 0)) (start $s) (func (export "_start")))"#;

#[tokio::test(flavor = "current_thread")]
async fn a_looping_start_function_ends_at_the_deadline_and_others_keep_running() {
    let h = Arc::new(Harness::new());
    let looping = h.spec(
        "looping",
        &wat::parse_str(LOOPING_START).unwrap(),
        Limits {
            timeout_ms: 400,
            ..Limits::default()
        },
    );
    let echo = h.spec("echo", &fixture("echo"), Limits::default());
    // One worker thread: if the start function did not yield, the echo call below
    // could not run until it ended.
    let stuck = tokio::spawn({
        let (h, looping) = (h.clone(), looping.clone());
        async move { h.call(&looping, "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let answer = h.call(&echo, "hi").await;
    assert_eq!(answer.result, CallResult::Done);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "echo waited {:?} behind the looping start function",
        started.elapsed()
    );
    let outcome = stuck.await.unwrap();
    match outcome.result {
        CallResult::Timeout(message) => {
            assert!(message.contains("start function"), "{message}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
