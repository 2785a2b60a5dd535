//! `newt bench --density N`: how many wasm functions one server holds, and what their
//! first call costs after a restart.
//!
//! On a server of its own (a home it keeps), the run deploys N distinct modules (the
//! wasm workload, each with a unique custom section appended: the same code under
//! another digest, so each has its own bundle and its own compiled artifact, as N
//! functions built from one template would), a bounded number at once; calls each
//! once; waits until the pools' keep-alive has let every instance go; and reads the
//! server's RSS (`/proc/PID/status`) and where it goes (`/proc/PID/smaps`, mappings
//! grouped by what they hold). Then it restarts the server on the same home and calls
//! each function once more: those first calls load every module from the disk cache,
//! and the cache directory, listed before and after, shows none was compiled again.

use super::fixtures::{Workload, with_custom_section};
use super::stats;
use super::target::SelfHosted;
use crate::client::{Client, ClientOpts};
use anyhow::{Context, bail};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Functions deployed when `--density` is given without a number.
pub const DEFAULT_FUNCTIONS: usize = 10_000;
/// Deploys in flight at once (the server compiles two at a time; more keep its
/// queue full while the client reads answers).
pub const DEPLOYS_AT_ONCE: usize = 8;
/// The custom section that makes each module distinct.
const SECTION: &str = "newt-bench-density";
/// The longest the run waits for the pools to let their idle instances go: the
/// default keep-alive (60 s) and the reaper's slack.
const IDLE_TIMEOUT: Duration = Duration::from_secs(150);
/// A mapping at least this large with no file behind it is the wasm allocator's
/// reservation (its slots' memories, tables and stacks), not the heap.
const POOL_RESERVATION: u64 = 1 << 30;

/// What the density run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Density {
    /// Functions deployed.
    pub functions: usize,
    /// What each is (the workload, with a unique custom section).
    pub function: String,
    /// Deploys in flight at once.
    pub deploy_concurrency: usize,
    /// Wall-clock time of all the deploys, s.
    pub deploy_secs: f64,
    /// Deploy latency, ms.
    pub deploy_p50_ms: Option<f64>,
    pub deploy_p99_ms: Option<f64>,
    /// The first call of each, after its deploy.
    pub first_calls: CallRound,
    /// The server's RSS before any deploy, bytes.
    pub rss_empty: u64,
    /// Right after the calls (instances still kept alive).
    pub rss_called: u64,
    /// Once no pool holds an instance any more.
    pub rss_idle: u64,
    /// Of which anonymous memory (`RssAnon`: heap, stacks, dirty copies).
    #[serde(default)]
    pub rss_idle_anon: u64,
    /// Of which file pages (`RssFile`: the binary, mmapped artifacts; clean ones the
    /// kernel can reclaim under pressure).
    #[serde(default)]
    pub rss_idle_file: u64,
    /// `(rss_idle - rss_empty) / functions`, bytes.
    pub rss_per_function: f64,
    /// How long the pools took to let their instances go, s.
    pub idle_wait_secs: f64,
    /// Where the idle RSS is, by what the mappings hold.
    pub memory: Vec<MemoryPart>,
    /// Mappings of the idle server (the kernel's default limit is 65 530).
    pub mappings: usize,
    /// The restart on the same home, until it listened, s.
    pub restart_secs: f64,
    /// RSS after the restart, before any call.
    pub rss_restarted: u64,
    /// The first call of each after the restart (modules loaded from the disk cache).
    pub restart_calls: CallRound,
    /// RSS after those calls.
    pub rss_restart_called: u64,
    /// This engine's compiled artifacts in the cache after the first round.
    pub artifacts: usize,
    /// Artifacts written (compiled) during the restart round: 0 when every module
    /// loaded from the cache.
    pub recompiled: usize,
}

/// One call of each function, one at a time (a refused call's latency counts too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRound {
    /// Latency, ms (client-side, over HTTP).
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Wall-clock time of the round, s.
    pub secs: f64,
    /// Calls per `x-newt-start` value (answered calls) or `HTTP <status>` (refused).
    pub starts: BTreeMap<String, u64>,
}

/// RSS of the mappings holding one kind of thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPart {
    /// What they hold.
    pub what: String,
    /// Their resident size, bytes.
    pub rss: u64,
    /// How many mappings.
    pub mappings: usize,
}

/// Runs the density benchmark with `functions` copies of `workload`.
pub async fn run(workload: &Workload, functions: usize) -> anyhow::Result<Density> {
    if functions == 0 {
        bail!("--density takes at least 1 function");
    }
    let home = tempfile::Builder::new()
        .prefix("newt-density-")
        .tempdir()
        .context("creating the density run's home")?;
    let mut server = start(home.path()).await?;
    let result = measure(workload, functions, home.path(), &mut server).await;
    if let Err(e) = &result {
        eprintln!(
            "bench: density: failed: {e:#}\nthe server's log:\n{}",
            server.log()
        );
    }
    tokio::task::block_in_place(|| server.stop());
    result
}

async fn start(home: &Path) -> anyhow::Result<SelfHosted> {
    tokio::task::block_in_place(|| SelfHosted::start_on(Some(home)))
}

fn client(server: &SelfHosted) -> anyhow::Result<Arc<Client>> {
    Ok(Arc::new(Client::new(&ClientOpts {
        server: server.base.clone(),
        token: None,
        json: false,
    })?))
}

fn pid(server: &SelfHosted) -> anyhow::Result<u32> {
    server.pid().context("the density server is not running")
}

async fn measure(
    workload: &Workload,
    functions: usize,
    home: &Path,
    server: &mut SelfHosted,
) -> anyhow::Result<Density> {
    let client = client(server)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = rss(pid(server)?)?;

    eprintln!("bench: density: deploying {functions} functions, {DEPLOYS_AT_ONCE} at a time");
    let deploying = Instant::now();
    let deploy_ms = deploy_all(&client, workload, functions).await?;
    let deploy_secs = deploying.elapsed().as_secs_f64();
    eprintln!(
        "bench: density: {functions} deploys took {deploy_secs:.1} s ({:.0}/s)",
        functions as f64 / deploy_secs
    );

    let first_calls = call_each(&client, workload, functions, "first calls").await?;
    let rss_called = rss(pid(server)?)?;
    let waited = Instant::now();
    wait_no_instances(&client).await?;
    let idle_wait_secs = waited.elapsed().as_secs_f64();
    let pid_now = pid(server)?;
    let rss_idle = rss(pid_now)?;
    let status = std::fs::read_to_string(format!("/proc/{pid_now}/status"))
        .context("reading the server's status")?;
    let kb = |field| status_kb(&status, field).unwrap_or(0) * 1024;
    let (rss_idle_anon, rss_idle_file) = (kb("RssAnon"), kb("RssFile"));
    let smaps = std::fs::read_to_string(format!("/proc/{pid_now}/smaps"))
        .context("reading the server's smaps")?;
    let exe = std::fs::read_link(format!("/proc/{pid_now}/exe")).unwrap_or_default();
    let (memory, mappings) = breakdown(&smaps, &exe.to_string_lossy());

    let cache = home.join("cache");
    let before = artifacts(&cache)?;
    eprintln!("bench: density: restarting the server on the same home");
    tokio::task::block_in_place(|| server.stop());
    let restarting = Instant::now();
    *server = start(home).await?;
    let restart_secs = restarting.elapsed().as_secs_f64();
    let client = self::client(server)?;
    let rss_restarted = rss(pid(server)?)?;
    let restart_calls = call_each(&client, workload, functions, "calls after the restart").await?;
    let rss_restart_called = rss(pid(server)?)?;
    let after = artifacts(&cache)?;

    Ok(Density {
        functions,
        function: format!("{} + a unique custom section", workload.label),
        deploy_concurrency: DEPLOYS_AT_ONCE,
        deploy_secs,
        deploy_p50_ms: stats::percentile(&deploy_ms, 50.0),
        deploy_p99_ms: stats::percentile(&deploy_ms, 99.0),
        first_calls,
        rss_empty,
        rss_called,
        rss_idle,
        rss_idle_anon,
        rss_idle_file,
        rss_per_function: per_function(rss_idle, rss_empty, functions),
        idle_wait_secs,
        memory,
        mappings,
        restart_secs,
        rss_restarted,
        restart_calls,
        rss_restart_called,
        artifacts: before.len(),
        recompiled: rewritten(&before, &after),
    })
}

fn name(i: usize) -> String {
    format!("density-{i:05}")
}

/// Deploys `functions` distinct modules, [`DEPLOYS_AT_ONCE`] at a time; each
/// deploy's latency, ms.
async fn deploy_all(
    client: &Arc<Client>,
    workload: &Workload,
    functions: usize,
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let bundle: Arc<[u8]> = workload.bundle.clone().into();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..DEPLOYS_AT_ONCE.min(functions) {
        let (client, next, bundle) = (client.clone(), next.clone(), bundle.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= functions {
                    return anyhow::Ok(samples);
                }
                let module = with_custom_section(&bundle, SECTION, &(i as u64).to_le_bytes());
                let t = Instant::now();
                let request = client
                    .request(Method::PUT, &format!("/v1/functions/{}", name(i)))
                    .body(module);
                client
                    .send(request)
                    .await
                    .with_context(|| format!("deploying {}", name(i)))?;
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
                if (i + 1) % 1000 == 0 {
                    eprintln!(
                        "bench: density: {} deployed ({:.0} s)",
                        i + 1,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let mut all = Vec::with_capacity(functions);
    while let Some(worker) = workers.join_next().await {
        all.extend(worker.context("a deploy worker panicked")??);
    }
    Ok(all)
}

/// Calls every function once, one at a time.
async fn call_each(
    client: &Client,
    workload: &Workload,
    functions: usize,
    what: &str,
) -> anyhow::Result<CallRound> {
    let mut samples = Vec::with_capacity(functions);
    let mut starts = BTreeMap::new();
    let started = Instant::now();
    for i in 0..functions {
        let t = Instant::now();
        let request = client
            .request(Method::POST, &format!("/v1/functions/{}/invoke", name(i)))
            .body(workload.input);
        // Not `client.send`: a refused call is counted (by its status), not fatal.
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {}", name(i)))?;
        let start = match response.status() {
            status if status.is_success() => response
                .headers()
                .get("x-newt-start")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string(),
            status => format!("HTTP {}", status.as_u16()),
        };
        response
            .bytes()
            .await
            .context("reading the call's output")?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        *starts.entry(start).or_insert(0) += 1;
    }
    let round = CallRound {
        p50_ms: stats::percentile(&samples, 50.0),
        p90_ms: stats::percentile(&samples, 90.0),
        p99_ms: stats::percentile(&samples, 99.0),
        max_ms: samples.iter().copied().reduce(f64::max),
        secs: started.elapsed().as_secs_f64(),
        starts,
    };
    eprintln!(
        "bench: density: {what}: p50 {} ms, p99 {} ms, max {} ms, starts {:?}",
        fmt_ms(round.p50_ms),
        fmt_ms(round.p99_ms),
        fmt_ms(round.max_ms),
        round.starts
    );
    Ok(round)
}

/// Waits until no pool holds an instance of a density function (the keep-alive let
/// them go).
async fn wait_no_instances(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let mut last_report = Instant::now();
    loop {
        let pools = client.get_json("/v1/pools").await?;
        let held: u64 = pools["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["function"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("density-"))
            })
            .map(|p| p["idle"].as_u64().unwrap_or(0) + p["busy"].as_u64().unwrap_or(0))
            .sum();
        if held == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{held} instances still held after {}s",
                IDLE_TIMEOUT.as_secs()
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!("bench: density: waiting for {held} kept-alive instances to go");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `VmRSS` of a process, bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_kb(&status, "VmRSS")
        .map(|kb| kb * 1024)
        .context("no VmRSS in /proc/PID/status")
}

/// A `Field:   N kB` line's N.
fn status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

fn per_function(rss: u64, empty: u64, functions: usize) -> f64 {
    rss.saturating_sub(empty) as f64 / functions.max(1) as f64
}

/// Groups `smaps` by what each mapping holds (`exe`: the server's executable): RSS and
/// count per group (largest first), and the number of mappings.
fn breakdown(smaps: &str, exe: &str) -> (Vec<MemoryPart>, usize) {
    let mut parts: BTreeMap<&'static str, (u64, usize)> = BTreeMap::new();
    let mut mappings = 0;
    let mut current = None;
    for line in smaps.lines() {
        if let Some((what, size)) = mapping_header(line, exe) {
            // A large reservation with no file is the wasm allocator's; its resident
            // part is what its slots touched.
            let what = if what == ANON && size >= POOL_RESERVATION {
                POOL
            } else {
                what
            };
            mappings += 1;
            parts.entry(what).or_insert((0, 0)).1 += 1;
            current = Some(what);
        } else if let Some(kb) = status_kb(line, "Rss")
            && let Some(what) = current
        {
            parts.entry(what).or_insert((0, 0)).0 += kb * 1024;
        }
    }
    let mut parts: Vec<MemoryPart> = parts
        .into_iter()
        .map(|(what, (rss, mappings))| MemoryPart {
            what: what.into(),
            rss,
            mappings,
        })
        .collect();
    parts.sort_by(|a, b| b.rss.cmp(&a.rss).then(a.what.cmp(&b.what)));
    (parts, mappings)
}

const CWASM: &str = "compiled code (cache/*.cwasm, mmapped)";
const SQLITE: &str = "SQLite (newt.db and its WAL)";
const BINARY: &str = "newt binary and shared libraries";
const ANON: &str = "heap and anonymous (allocator, registry, pools, stacks)";
const POOL: &str = "wasm allocator slots (touched pages of its reservation)";
const OTHER: &str = "other files";

/// A smaps mapping header (`start-end perms offset dev inode [path]`): what it holds
/// and its size, bytes.
fn mapping_header(line: &str, exe: &str) -> Option<(&'static str, u64)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    );
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.collect::<Vec<_>>().join(" ");
    let what = if path.ends_with(".cwasm") || path.contains(".cwasm ") {
        CWASM
    } else if path.contains("newt.db") || path.ends_with(".db") {
        SQLITE
    } else if path.is_empty() || path == "[heap]" || path.starts_with("[anon") || path == "[stack]"
    {
        ANON
    } else if path.contains(".so") || (!exe.is_empty() && path == exe) || path.starts_with('[') {
        BINARY
    } else {
        OTHER
    };
    Some((what, end.saturating_sub(start)))
}

/// Compiled artifacts by file name: (size, modified, inode).
fn artifacts(cache: &Path) -> anyhow::Result<BTreeMap<String, (u64, SystemTime, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeMap::new();
    let entries =
        std::fs::read_dir(cache).with_context(|| format!("listing {}", cache.display()))?;
    for entry in entries.flatten() {
        let file = PathBuf::from(entry.file_name());
        if file.extension().is_none_or(|e| e != "cwasm") {
            continue;
        }
        let meta = entry.metadata().context("reading an artifact's metadata")?;
        found.insert(
            file.to_string_lossy().into_owned(),
            (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.ino(),
            ),
        );
    }
    Ok(found)
}

/// Artifacts in `after` that are new or were written again (a compile writes a new
/// file and renames it over the old one: another inode).
fn rewritten<T: PartialEq>(before: &BTreeMap<String, T>, after: &BTreeMap<String, T>) -> usize {
    after
        .iter()
        .filter(|(file, meta)| before.get(*file) != Some(meta))
        .count()
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

impl Density {
    /// The density run as a Markdown subsection.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let n = self.functions;
        let _ = writeln!(md, "### Density: {n} wasm functions\n");
        let _ = writeln!(
            md,
            "- {n} distinct modules ({}: each its own digest and compiled artifact), \
             deployed {} at a time in {:.1} s ({:.0} deploys/s; deploy p50 {} ms, p99 {} ms).",
            self.function,
            self.deploy_concurrency,
            self.deploy_secs,
            n as f64 / self.deploy_secs.max(1e-9),
            fmt_ms(self.deploy_p50_ms),
            fmt_ms(self.deploy_p99_ms),
        );
        let _ = writeln!(
            md,
            "- Each called once, one at a time: {}.",
            self.first_calls.line()
        );
        let _ = writeln!(
            md,
            "- Server RSS: {} empty; {} right after the calls; {} once the keep-alive let \
             every instance go ({:.0} s later): **{:.1} KiB per function** (target: idle \
             RSS <= 1 GiB at 10 000); of the idle RSS {} anonymous, {} file pages. {} \
             mappings.",
            mib(self.rss_empty),
            mib(self.rss_called),
            mib(self.rss_idle),
            self.idle_wait_secs,
            self.rss_per_function / 1024.0,
            mib(self.rss_idle_anon),
            mib(self.rss_idle_file),
            self.mappings,
        );
        let _ = writeln!(
            md,
            "- After a restart on the same home (listening after {:.1} s, RSS {}): the \
             first call of each, one at a time: **{}** (target: <= 5 ms); RSS then {}. \
             Compiled artifacts in the cache: {}; written again during the restart round: \
             {}.\n",
            self.restart_secs,
            mib(self.rss_restarted),
            self.restart_calls.line(),
            mib(self.rss_restart_called),
            self.artifacts,
            self.recompiled,
        );
        let _ = writeln!(md, "Where the idle RSS is (`/proc/PID/smaps`):\n");
        let _ = writeln!(md, "| mappings holding | RSS | mappings |\n|---|---|---|");
        for part in &self.memory {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                part.what,
                mib(part.rss),
                part.mappings
            );
        }
        md.push('\n');
        md
    }
}

impl CallRound {
    fn line(&self) -> String {
        let starts: Vec<String> = self
            .starts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!(
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({})",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.max_ms),
            starts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 fd:01 123 /usr/local/bin/newt
Size:               2048 kB
Rss:                1024 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Size:               1024 kB
Rss:                 800 kB
7f0000000000-7f0100000000 rw-p 00000000 00:00 0
Size:           4194304 kB
Rss:                 512 kB
7f0200000000-7f0200010000 r-xp 00001000 fd:01 456 /tmp/h/cache/abc-0011.cwasm
Size:                 64 kB
Rss:                  40 kB
7f0200010000-7f0200020000 r--p 00000000 fd:01 456 /tmp/h/cache/abc-0011.cwasm
Size:                 64 kB
Rss:                  24 kB
7f0300000000-7f0300001000 rw-s 00000000 fd:01 789 /tmp/h/newt.db-shm
Size:                  4 kB
Rss:                   4 kB
7f0400000000-7f0400100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 100 kB
";

    #[test]
    fn smaps_is_grouped_by_what_the_mappings_hold() {
        let (parts, mappings) = breakdown(SMAPS, "/usr/local/bin/newt");
        assert_eq!(mappings, 7);
        let get = |what: &str| parts.iter().find(|p| p.what == what).cloned().unwrap();
        assert_eq!((get(BINARY).rss, get(BINARY).mappings), (1024 << 10, 1));
        assert_eq!((get(ANON).rss, get(ANON).mappings), (900 << 10, 2));
        assert_eq!((get(POOL).rss, get(POOL).mappings), (512 << 10, 1));
        assert_eq!((get(CWASM).rss, get(CWASM).mappings), (64 << 10, 2));
        assert_eq!((get(SQLITE).rss, get(SQLITE).mappings), (4 << 10, 1));
        assert_eq!(parts[0].what, BINARY, "largest first");
        let total: u64 = parts.iter().map(|p| p.rss).sum();
        assert_eq!(total, (1024 + 800 + 512 + 64 + 4 + 100) << 10);
    }

    #[test]
    fn status_fields_are_read_in_kb() {
        let status = "Name:\tnewt\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\nRssAnon:\t 100 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(8192));
        assert_eq!(status_kb(status, "RssAnon"), Some(100));
        assert_eq!(status_kb(status, "Rss"), None, "a prefix of another field");
        assert_eq!(
            per_function(300 << 20, 100 << 20, 1000),
            (200 << 20) as f64 / 1000.0
        );
        assert_eq!(per_function(1, 2, 10), 0.0);
    }

    #[test]
    fn rewritten_artifacts_are_new_or_changed_files() {
        let before = BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2)]);
        let same = before.clone();
        assert_eq!(rewritten(&before, &same), 0);
        let mut after = before.clone();
        after.insert("b".into(), 3);
        after.insert("c".into(), 1);
        assert_eq!(rewritten(&before, &after), 2);
    }

    #[test]
    fn the_markdown_names_the_targets_and_every_part() {
        let round = CallRound {
            p50_ms: Some(1.0),
            p90_ms: Some(2.0),
            p99_ms: Some(3.0),
            max_ms: Some(9.0),
            secs: 10.0,
            starts: BTreeMap::from([("cold".to_string(), 10)]),
        };
        let (memory, mappings) = breakdown(SMAPS, "/usr/local/bin/newt");
        let density = Density {
            functions: 10,
            function: "hello + a unique custom section".into(),
            deploy_concurrency: 8,
            deploy_secs: 2.0,
            deploy_p50_ms: Some(5.0),
            deploy_p99_ms: Some(9.0),
            first_calls: round.clone(),
            rss_empty: 10 << 20,
            rss_called: 30 << 20,
            rss_idle: 20 << 20,
            rss_idle_anon: 8 << 20,
            rss_idle_file: 12 << 20,
            rss_per_function: per_function(20 << 20, 10 << 20, 10),
            idle_wait_secs: 61.0,
            memory,
            mappings,
            restart_secs: 0.5,
            rss_restarted: 12 << 20,
            restart_calls: round,
            rss_restart_called: 22 << 20,
            artifacts: 10,
            recompiled: 0,
        };
        let md = density.markdown();
        assert!(md.starts_with("### Density: 10 wasm functions"), "{md}");
        assert!(md.contains("**1024.0 KiB per function**"), "{md}");
        assert!(md.contains("8 MiB anonymous, 12 MiB file pages"), "{md}");
        assert!(md.contains("p50 1.00 ms, p90 2.00 ms, p99 3.00 ms, max 9.00 ms (10 cold)"));
        assert!(md.contains("written again during the restart round: 0"));
        assert!(md.contains(&format!("| {CWASM} | 0 MiB | 2 |")), "{md}");
        let json = serde_json::to_string(&density).unwrap();
        assert_eq!(serde_json::from_str::<Density>(&json).unwrap(), density);
    }
}
