//! HTTP throughput of warm wasm calls: the real `newt serve` over loopback, at
//! concurrency 1, the number of cores, and 4 × cores. Criterion reports the time per
//! call (throughput = its inverse); `newt bench` has the side-by-side comparison.

use criterion::{Criterion, Throughput};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ECHO_WAT: &str = include_str!("../../tests/fixtures/echo.wat");

/// A `newt serve` on a temporary home, killed when dropped.
struct Server {
    child: Child,
    base: String,
    _home: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let home = tempfile::tempdir().expect("temp home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_newt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--home"])
        .arg(home.path())
        .env("DOCKER_HOST", "unix:///nonexistent-for-the-http-bench.sock")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start newt serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut base = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("server output");
        if let Some(rest) = line.strip_prefix("newt listening on ") {
            base = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            break;
        }
    }
    assert!(!base.is_empty(), "newt serve did not start");
    Server {
        child,
        base,
        _home: home,
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = start();
    let client = reqwest::Client::new();
    let wasm = wat::parse_str(ECHO_WAT).expect("echo fixture");
    let url = format!("{}/v1/functions/echo/invoke", server.base);
    rt.block_on(async {
        let deployed = client
            .put(format!("{}/v1/functions/echo", server.base))
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
