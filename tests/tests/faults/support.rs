//! What the fault scenarios share: the scale they run at, one-at-a-time execution,
//! the server process's resource readings, and the report they print.

use newt_tests::Server;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

/// How big a run is: `short` (the default: what `cargo test` and CI run) or `full`
/// (`NEWT_FAULTS=full`: the figures of RELIABILITY.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Short,
    Full,
}

impl Scale {
    /// The scale this run was asked for.
    pub fn get() -> Scale {
        match std::env::var("NEWT_FAULTS").as_deref() {
            Ok("full") => Scale::Full,
            _ => Scale::Short,
        }
    }

    /// `short` in a short run, `full` in a full one.
    pub fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Scale::Short => short,
            Scale::Full => full,
        }
    }

    /// A duration in seconds, scaled.
    pub fn secs(self, short: u64, full: u64) -> Duration {
        Duration::from_secs(self.pick(short, full))
    }
}

/// Holds the machine for one scenario: scenarios never overlap, since one may stop
/// the Docker engine and another loads every core. A mutex keeps this binary's tests
/// apart; a lock on a file under the temporary directory keeps apart the runs of
/// separate processes (two `cargo test` at once), waited for at most 30 minutes.
pub async fn exclusive() -> (MutexGuard<'static, ()>, std::fs::File) {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let guard = LOCK.get_or_init(|| Mutex::new(())).lock().await;
    let path = std::env::temp_dir().join("newt-faults.lock");
    let file =
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let until = std::time::Instant::now() + Duration::from_secs(30 * 60);
    loop {
        match file.try_lock() {
            Ok(()) => return (guard, file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("locking {}: {e}", path.display()),
        }
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS`), if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of process `pid`, if it is alive.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The `q` quantile (0..=1) of `samples` (sorted here), in the samples' unit.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Milliseconds with three decimals, for the report.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// A scenario's figures: printed as a two-column table (run with `--nocapture` to see
/// it), in the order they were added.
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(title: &str) -> Report {
        Report {
            title: format!("{title} ({:?} run)", Scale::get()).to_lowercase(),
            rows: Vec::new(),
        }
    }

    /// Adds one figure.
    pub fn row(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Report {
        self.rows.push((name.to_string(), value.to_string()));
        self
    }

    /// Prints the table.
    pub fn print(&self) {
        let mut out = format!("\n### {}\n\n| figure | value |\n|---|---|\n", self.title);
        for (name, value) in &self.rows {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        println!("{out}");
    }
}

/// How long one request may take before a scenario counts it failed: every wait ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client whose every request has a deadline.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client")
}

/// A client for a scenario's own requests (deploys, pool readings): it keeps no
/// connection open, so the server's open files are the load's alone.
pub fn probe() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(900))
        .build()
        .expect("an HTTP client")
}

/// Deploys `body` as `name` (`query` starts with `&` or is empty) and waits for the
/// build; panics with the server's answer and log if the deploy fails.
pub async fn deploy(server: &Server, name: &str, body: Vec<u8>, query: &str) -> Value {
    let response = probe()
        .put(server.url(&format!("/v1/functions/{name}?wait=true{query}")))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("deploying {name}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "deploying {name}: {status} {text}\n{}",
        server.log()
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// `GET path` as JSON; panics unless it answers 2xx.
pub async fn get_json(server: &Server, path: &str) -> Value {
    let response = probe()
        .get(server.url(path))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "GET {path}: {status} {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// A function's pool as `GET /v1/functions/{name}` shows it.
pub async fn pool(server: &Server, name: &str) -> Value {
    get_json(server, &format!("/v1/functions/{name}")).await["pool"].clone()
}

/// Whether a pool is at rest: `idle` instances ready, none busy, starting or waited for.
pub fn at_rest(pool: &Value, idle: u64) -> bool {
    pool["idle"] == idle && pool["busy"] == 0 && pool["starting"] == 0 && pool["waiting"] == 0
}

/// Polls `check` every 20 ms until it holds: the time it took, or `None` if `limit`
/// passed first.
pub async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `x-newt-call-id` of an answer.
pub fn call_id(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-newt-call-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
