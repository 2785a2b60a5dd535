//! In-process cost of a wasm call, without HTTP: the floor newt's API is measured
//! against.
//!
//! - `warm`: a call of a prepared function (instantiate from the `InstancePre`, run,
//!   tear down), sequential and 2 in parallel.
//! - `cold_from_cache`: a new executor loading the module from the on-disk cache, then
//!   one call (what the first call after a restart pays).
//!
//! Guest: the `echo` WAT fixture (a trivial WASI command). After criterion, the bench
//! prints p50/p90/p99 of the warm call from 10 000 samples, for echo and for the
//! `dice` example when `make guests` has built it.

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use newt_runtime::{
    CallRequest, CallResult, Cas, FunctionSpec, Invoker, Limits, WasmConfig, WasmExecutor,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn echo() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/echo.wat");
    wat::parse_file(path).expect("echo fixture")
}

/// The dice example, when `make guests` has built it.
fn dice() -> Option<Vec<u8>> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    std::fs::read(format!("{target}/wasm32-wasip1/release/dice.wasm")).ok()
}

fn invoker(home: &Path) -> (Invoker, Arc<FunctionSpec>) {
    invoker_for(home, &echo())
}

fn invoker_for(home: &Path, module: &[u8]) -> (Invoker, Arc<FunctionSpec>) {
    let cas = Cas::open(home.join("cas")).unwrap();
    let digest = cas.put(module).unwrap();
    let wasm = WasmExecutor::new(WasmConfig {
        cache_dir: home.join("cache"),
        pooling: true,
    })
    .unwrap();
    let spec = Arc::new(FunctionSpec {
        name: "echo".into(),
        version: 1,
        runtime: "wasm".into(),
        digest: digest.to_string(),
        limits: Limits::default(),
        policy: newt_runtime::Policy::default(),
        env: Default::default(),
        allow_outbound: Default::default(),
    });
    (Invoker::new(cas).with_executor(wasm), spec)
}

fn request() -> CallRequest {
    CallRequest {
        call_id: "bench".into(),
        input: Bytes::from_static(b"{\"roll\":\"4d6\"}"),
        http: None,
    }
}

async fn call(invoker: &Invoker, spec: &Arc<FunctionSpec>) {
    let deadline = std::time::Instant::now() + spec.limits.timeout();
    let outcome = invoker.invoke(spec, request(), deadline).await.unwrap();
    assert_eq!(outcome.result, CallResult::Done);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn warm(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (invoker, spec) = invoker(home.path());
    rt.block_on(call(&invoker, &spec));
    let mut group = c.benchmark_group("wasm");
    group.bench_function("warm", |b| b.iter(|| rt.block_on(call(&invoker, &spec))));
    group.bench_function("warm_2_parallel", |b| {
        b.iter(|| rt.block_on(async { tokio::join!(call(&invoker, &spec), call(&invoker, &spec)) }))
    });
    group.finish();
}

fn cold_from_cache(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime();
    // Fill the module cache once.
    {
        let (warm_up, spec) = invoker(home.path());
        rt.block_on(call(&warm_up, &spec));
    }
    c.bench_function("wasm/cold_from_cache", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A new engine that has loaded nothing yet, as after a restart.
                let (fresh, spec) = invoker(home.path());
                let start = Instant::now();
                rt.block_on(call(&fresh, &spec));
                total += start.elapsed();
            }
            total
        })
    });
}

fn percentiles(name: &str, module: &[u8]) {
    let home = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (invoker, spec) = invoker_for(home.path(), module);
    rt.block_on(call(&invoker, &spec));
    let mut samples: Vec<Duration> = (0..10_000)
        .map(|_| {
            let start = Instant::now();
            rt.block_on(call(&invoker, &spec));
            start.elapsed()
        })
        .collect();
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "{name}: warm call in-process, 10000 samples: p50 {:?}  p90 {:?}  p99 {:?}",
        at(0.50),
        at(0.90),
        at(0.99)
    );
}

criterion_group!(benches, warm, cold_from_cache);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles("echo", &echo());
    match dice() {
        Some(dice) => percentiles("dice", &dice),
        None => println!("dice: skipped, run `make guests` first"),
    }
}
