//! HTTP throughput of warm wasm calls: the real `newt serve` over loopback, at
//! concurrency 1, the number of cores, and 4 × cores. Criterion reports the time per
//! call (throughput = its inverse); `newt bench` has the side-by-side comparison.

use criterion::{Criterion, Throughput};
use newt_host::testing::TestServer;
use std::time::{Duration, Instant};

const ECHO_WAT: &str = include_str!("../../tests/fixtures/echo.wat");

/// A `newt serve` on a temporary home, wasm only: no Docker engine to reach.
fn start() -> TestServer {
    TestServer::builder(env!("CARGO_BIN_EXE_newt"))
        .env("DOCKER_HOST", "unix:///nonexistent-for-the-http-bench.sock")
        .env("RUST_LOG", "warn")
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = start();
    let client = reqwest::Client::new();
    let wasm = wat::parse_str(ECHO_WAT).expect("echo fixture");
    let url = server.url("/v1/functions/echo/invoke");
    rt.block_on(async {
        let deployed = client
            .put(server.url("/v1/functions/echo"))
            .body(wasm)
            .send()
            .await
            .expect("deploy");
        assert!(deployed.status().is_success());
    });

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = criterion.benchmark_group("http/warm_wasm_invoke");
    for concurrency in [1, cores, 4 * cores] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("c{concurrency}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    let workers = (0..concurrency).map(|w| {
                        let (client, url) = (client.clone(), url.clone());
                        // Spread `iters` calls over the workers.
                        let calls = iters / concurrency as u64
                            + u64::from((w as u64) < iters % concurrency as u64);
                        tokio::spawn(async move {
                            for _ in 0..calls {
                                let response = client.post(&url).body("{}").send().await.unwrap();
                                assert!(response.status().is_success());
                                response.bytes().await.unwrap();
                            }
                        })
                    });
                    for worker in workers.collect::<Vec<_>>() {
                        worker.await.unwrap();
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
    criterion.final_summary();
    drop(server);
}
