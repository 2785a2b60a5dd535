//! HTTP throughput beside `wasmtime serve` on equal work: the same wasi:http
//! component (source in `host/bench-fixtures/http-hello`, compiled into this binary),
//! served by the wasmtime CLI and by newt (`Newt::component_rows`), loaded by the same
//! client loop at the same concurrencies.
//!
//! The component is built on first use with `cargo build --target wasm32-wasip2` into
//! `~/.cache/newt/bench/http-hello`; without `wasmtime`, cargo or the target the rows
//! are skipped with what to install.

use super::fixtures;
use super::load::{Load, Sample, closed_loop, timed};
use super::newt::COMPONENT;
use super::peers::{WASMTIME_HINT, find_on_path};
use super::report::{Row, peer};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CARGO_TOML: &str = include_str!("../../bench-fixtures/http-hello/Cargo.toml");
const LIB_RS: &str = include_str!("../../bench-fixtures/http-hello/src/lib.rs");
/// How to get the target the component is built for.
pub const WASIP2_HINT: &str = "install the target with rustup target add wasm32-wasip2";
/// How long `wasmtime serve` gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows of `wasmtime serve` running `component` (built by [`build_component`], or why
/// it could not be) at each concurrency (skipped rows when it cannot run).
pub async fn wasmtime_serve_rows(
    component: Result<&Path, &str>,
    concurrency: &[usize],
    calls: usize,
) -> Vec<Row> {
    let work = super::peers::both(fixtures::COMPONENT_LABEL);
    let skip_all = |reason: &str| {
        concurrency
            .iter()
            .map(|&c| Row::skipped(COMPONENT, peer::WASMTIME_SERVE, c, reason).with_work(&work))
            .collect()
    };
    let Some(wasmtime) = find_on_path("wasmtime") else {
        return skip_all(WASMTIME_HINT);
    };
    let component = match component {
        Ok(path) => path,
        Err(why) => return skip_all(why),
    };
    let server = match Serve::start(&wasmtime, component).await {
        Ok(server) => server,
        Err(e) => return skip_all(&format!("failed: {e:#}")),
    };
    let mut rows = Vec::new();
    for &c in concurrency {
        let row = match http_load(&server.url, calls, c).await {
            Ok(load) => Row::measured(
                COMPONENT,
                peer::WASMTIME_SERVE,
                c,
                load.samples_ms,
                load.wall,
            ),
            Err(e) => Row::skipped(
                COMPONENT,
                peer::WASMTIME_SERVE,
                c,
                &format!("failed: {e:#}"),
            ),
        };
        rows.push(row.with_work(&work));
    }
    rows
}

/// Where the component's crate is written and built.
fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("newt/bench/http-hello"))
}

/// Builds the component (cargo skips it when nothing changed) and returns its path.
pub async fn build_component() -> anyhow::Result<PathBuf> {
    if !target_installed().await {
        bail!("{WASIP2_HINT}");
    }
    let dir = cache_dir()?;
    write_if_changed(&dir.join("Cargo.toml"), CARGO_TOML)?;
    write_if_changed(&dir.join("src/lib.rs"), LIB_RS)?;
    super::peers::cargo_build(
        |cargo| {
            cargo
                .args(["--quiet", "--release", "--target", "wasm32-wasip2"])
                .arg("--manifest-path")
                .arg(dir.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(dir.join("target"))
                .env_remove("CARGO_TARGET_DIR");
        },
        "building the wasi:http component with cargo failed",
    )
    .await?;
    Ok(dir.join("target/wasm32-wasip2/release/http_hello.wasm"))
}

async fn target_installed() -> bool {
    let Ok(out) = tokio::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .await
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2/lib");
    std::fs::read_dir(lib).is_ok_and(|mut entries| entries.next().is_some())
}

fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A running `wasmtime serve`, killed when dropped.
struct Serve {
    _child: tokio::process::Child,
    url: String,
}

impl Serve {
    async fn start(wasmtime: &Path, component: &Path) -> anyhow::Result<Serve> {
        // A free port: bind, note it, release it for wasmtime.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(wasmtime)
            .args(["serve", "-S", "cli", "--addr", &addr])
            .arg(component)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting wasmtime serve")?;
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("wasmtime serve did not listen on {addr} within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Serve {
            _child: child,
            url: format!("http://{addr}/"),
        })
    }
}

/// `total` POSTs of the bench input to `url` with `concurrency` in flight, through
/// the loop newt's rows use.
async fn http_load(url: &str, total: usize, concurrency: usize) -> anyhow::Result<Load> {
    let client = reqwest::Client::new();
    let url: Arc<str> = url.into();
    closed_loop(total, concurrency, move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let (ms, status) = timed(client.post(&*url).body(fixtures::HELLO_INPUT)).await?;
            if !status.is_success() {
                bail!("{} answered {}", url, status);
            }
            Ok(Sample { ms, expected: true })
        }
    })
    .await
}
