//! The Docker engine lost and back: steady calls of a warm Python function and of a
//! wasm function, the Docker daemon stopped part-way (SIGTERM to `dockerd`, as an
//! operator's `systemctl stop docker` does), started again after an outage, and the
//! account:
//!
//! - every container call while the engine is away answers 503 "Docker engine not
//!   reachable", within 1 s, and its record says `failed` with that message; calls in
//!   flight when it stopped end the same way (or finished before their container
//!   went), never as the function's failure (502) or an internal error (500);
//! - wasm calls all succeed throughout: their p50/p99 before and during the outage;
//! - `/healthz` answers throughout and says whether the engine is reachable;
//! - once the engine answers again, container calls work without restarting newt,
//!   the pool is back to `min_warm` (its dead containers discarded, none handed to a
//!   call), and no container of the old engine is left behind.
//!
//! The scenario stops and restarts the machine's own `dockerd`, so it runs only as
//! root with a `dockerd` process to control; otherwise it skips with the reason (even
//! under `NEWT_REQUIRE_DOCKER=1`: controlling the engine is a privilege, not a
//! dependency). A guard starts `dockerd` again however the test ends.
//!
//! Short (CI): 3 s of calls before, a ~5 s outage. Full (`NEWT_FAULTS=full`): 10 s
//! before, a 30 s outage.

use crate::crash::python_bundle;
use crate::support::{
    Report, Scale, call_id, client, deploy, exclusive, ms, pool, quantile, within,
};
use newt_tests::{Server, containers_of, docker_available, fixture};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Warm containers the Python function keeps.
const MIN_WARM: u64 = 2;
/// The promise: a container call while the engine is away answers within this long.
const FAIL_FAST: Duration = Duration::from_secs(1);
/// How long dockerd gets to stop, and to answer again after it is started.
const DOCKERD_DEADLINE: Duration = Duration::from_secs(60);
/// What a 503 during the outage must say.
const UNREACHABLE: &str = "Docker engine not reachable";

/// The machine's `dockerd`: how to start it again exactly as it was, and a guard that
/// does so if the test stopped it, however the test ends.
struct Dockerd {
    pid: u32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log: PathBuf,
    stopped: bool,
}

impl Dockerd {
    /// The running `dockerd`, or why the scenario cannot control it.
    fn find() -> Result<Dockerd, String> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("reading /proc/self/status: {e}"))?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .unwrap_or("?");
        if uid != "0" {
            return Err(format!(
                "stopping and starting dockerd needs root (effective uid {uid})"
            ));
        }
        let procs = std::fs::read_dir("/proc").map_err(|e| format!("listing /proc: {e}"))?;
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_dockerd = argv
                .first()
                .is_some_and(|a| a.rsplit('/').next() == Some("dockerd"));
            if !is_dockerd {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .unwrap_or_else(|_| PathBuf::from("/"));
            return Ok(Dockerd {
                pid,
                argv,
                env,
                cwd,
                log: PathBuf::from(format!("/tmp/newt-faults-dockerd-{pid}.log")),
                stopped: false,
            });
        }
        Err("no dockerd process runs here (the engine is remote or managed elsewhere)".into())
    }

    /// Whether the process is gone (a zombie counts as gone: it serves nothing).
    fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    /// SIGTERM, then waits (bounded) for the daemon to exit.
    async fn stop(&mut self) {
        self.stopped = true;
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid);
        let until = Instant::now() + DOCKERD_DEADLINE;
        while !self.exited() {
            assert!(
                Instant::now() < until,
                "dockerd (pid {}) did not exit within {DOCKERD_DEADLINE:?} of SIGTERM",
                self.pid
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the same command line, detached in its own session (it outlives the
    /// test), with the same environment and directory, its output to `log`.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        // `setsid -f`: a new session in a forked child, so dockerd is nobody's child
        // here and no signal to the test's process group reaches it.
        let status = Command::new("setsid")
            .arg("-f")
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .map_err(|e| format!("running setsid {:?}: {e}", self.argv))?;
        if !status.success() {
            return Err(format!("setsid {:?}: {status}", self.argv));
        }
        self.stopped = false;
        Ok(())
    }

    /// Starts dockerd again and waits (bounded) until `docker` gets an answer.
    fn start(&mut self) -> Result<(), String> {
        self.spawn()?;
        let until = Instant::now() + DOCKERD_DEADLINE;
        while !engine_answers() {
            if Instant::now() >= until {
                return Err(format!(
                    "dockerd did not answer within {DOCKERD_DEADLINE:?} of its start; its \
                     log is {}",
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Dockerd {
    /// The machine's other work needs its engine: whatever happened, start it again.
    fn drop(&mut self) {
        if self.stopped
            && let Err(e) = self.start()
        {
            eprintln!(
                "RESTORING DOCKER FAILED: {e}; start it by hand: {:?}",
                self.argv
            );
        }
    }
}

/// Whether the engine answers the `docker` CLI.
fn engine_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One call as the client saw it.
struct Seen {
    python: bool,
    sent: Instant,
    answered: Instant,
    /// The HTTP status; 0 when no answer came.
    status: u16,
    call_id: Option<String>,
    /// The error message of a non-200 answer.
    message: String,
}

impl Seen {
    fn latency(&self) -> Duration {
        self.answered.duration_since(self.sent)
    }
}

/// One `/healthz` reading.
struct Health {
    at: Instant,
    took: Duration,
    status: u16,
    /// `docker.reachable`; `None` when the body did not say.
    reachable: Option<bool>,
}

/// Calls `name` with `body` in a closed loop, `pause` apart, until `stop`.
async fn calls(
    base: String,
    name: &'static str,
    body: &'static str,
    python: bool,
    pause: Duration,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let http = client();
    let url = format!("{base}/v1/functions/{name}/invoke");
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let answer = http.post(&url).body(body).send().await;
        let (status, call_id, message) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let call_id = call_id(&response);
                let message = if status == 200 {
                    String::new()
                } else {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    body["error"]["message"].as_str().unwrap_or("").to_string()
                };
                (status, call_id, message)
            }
            Err(e) => (0, None, e.to_string()),
        };
        seen.lock().unwrap().push(Seen {
            python,
            sent,
            answered: Instant::now(),
            status,
            call_id,
            message,
        });
        tokio::time::sleep(pause).await;
    }
}

/// Reads `/healthz` every 100 ms until `stop`.
async fn health(base: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<Health>>>) {
    let http = client();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let answer = http.get(format!("{base}/healthz")).send().await;
        let (status, reachable) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body["docker"]["reachable"].as_bool())
            }
            Err(_) => (0, None),
        };
        seen.lock().unwrap().push(Health {
            at,
            took: at.elapsed(),
            status,
            reachable,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(calls: &[&Seen]) -> String {
    calls
        .iter()
        .take(5)
        .map(|c| {
            format!(
                "{} after {} ms: {}",
                c.status,
                c.latency().as_millis(),
                c.message
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_engine_lost_and_back() {
    let _machine = exclusive().await;
    let mut dockerd = match Dockerd::find() {
        Ok(dockerd) => dockerd,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    if !docker_available() {
        return;
    }
    let scale = Scale::get();
    let before = scale.secs(3, 10);
    let outage = scale.secs(5, 30);

    let server = Server::start();
    deploy(&server, "echo", fixture!("echo").to_vec(), "").await;
    deploy(
        &server,
        "pyecho",
        python_bundle(),
        &format!("&runtime=python&preload=function&min_warm={MIN_WARM}"),
    )
    .await;
    let warm = within(Duration::from_secs(120), async || {
        pool(&server, "pyecho").await["idle"].as_u64() >= Some(MIN_WARM)
    })
    .await;
    assert!(
        warm.is_some(),
        "the pool never reached min_warm\n{}",
        server.log()
    );

    // Steady calls: two Python callers (each call sleeps 200 ms in the handler, so
    // calls are in flight when the engine stops), one wasm caller, /healthz.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let healths = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(calls(
            server.base.clone(),
            "pyecho",
            r#"{"sleep":0.2}"#,
            true,
            Duration::from_millis(20),
            stop.clone(),
            seen.clone(),
        )));
    }
    tasks.push(tokio::spawn(calls(
        server.base.clone(),
        "echo",
        r#"{"n":1}"#,
        false,
        Duration::from_millis(5),
        stop.clone(),
        seen.clone(),
    )));
    tasks.push(tokio::spawn(health(
        server.base.clone(),
        stop.clone(),
        healths.clone(),
    )));

    tokio::time::sleep(before).await;
    let stopping = Instant::now();
    dockerd.stop().await;
    let exited = Instant::now();
    tokio::time::sleep(outage).await;
    let starting = Instant::now();
    let started = tokio::task::spawn_blocking(move || {
        let result = dockerd.start();
        (dockerd, result)
    })
    .await
    .expect("the start task");
    let (dockerd, result) = started;
    result.unwrap_or_else(|e| panic!("{e}"));
    drop(dockerd);
    let answers = Instant::now();

    // Recovery: a Python call succeeds again, and the pool is back at min_warm.
    let first_success = within(Duration::from_secs(60), async || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|c| c.python && c.status == 200 && c.answered >= starting)
    })
    .await;
    let refilled = within(Duration::from_secs(60), async || {
        pool(&server, "pyecho").await["idle"].as_u64() >= Some(MIN_WARM)
    })
    .await
    .map(|t| answers + t);
    // A little more steady traffic on the recovered engine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a load task");
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let healths = std::mem::take(&mut *healths.lock().unwrap());
    let python: Vec<&Seen> = seen.iter().filter(|c| c.python).collect();
    let wasm: Vec<&Seen> = seen.iter().filter(|c| !c.python).collect();

    // Python calls, by phase. Down: sent after dockerd exited, answered before it
    // was started again. At the stop: in flight at SIGTERM, or sent while dockerd
    // was stopping (its API closes first, then it stops its containers).
    let down: Vec<&Seen> = python
        .iter()
        .copied()
        .filter(|c| c.sent >= exited && c.answered <= starting)
        .collect();
    let at_stop: Vec<&Seen> = python
        .iter()
        .copied()
        .filter(|c| c.sent < exited && c.answered >= stopping)
        .collect();
    let in_flight = at_stop.iter().filter(|c| c.sent < stopping).count();
    let before_stop: Vec<&Seen> = python
        .iter()
        .copied()
        .filter(|c| c.answered < stopping)
        .collect();
    // Once the pool is back: every call must succeed.
    let settled_calls: Vec<&Seen> = python
        .iter()
        .copied()
        .filter(|c| refilled.is_some_and(|at| c.sent >= at + Duration::from_secs(1)))
        .collect();
    let refused_after: Vec<&Seen> = python
        .iter()
        .copied()
        .filter(|c| c.sent >= answers && c.status != 200)
        .collect();
    let first_ok = python
        .iter()
        .filter(|c| c.status == 200 && c.answered >= starting)
        .map(|c| c.answered - starting)
        .min();

    let mut report = Report::new("Docker engine lost and back");
    // Calls sent while the engine was away: their whole latency.
    let time_to_503 = down
        .iter()
        .filter(|c| c.status == 503)
        .map(|c| c.latency())
        .max()
        .unwrap_or_default();
    let mut down_latency: Vec<Duration> = down.iter().map(|c| c.latency()).collect();
    // In flight at SIGTERM: from SIGTERM to their answer. Sent while dockerd was
    // stopping: their latency.
    let in_flight_end = at_stop
        .iter()
        .filter(|c| c.sent < stopping)
        .map(|c| c.answered.saturating_duration_since(stopping))
        .max()
        .unwrap_or_default();
    let stopping_latency = at_stop
        .iter()
        .filter(|c| c.sent >= stopping)
        .map(|c| c.latency())
        .max()
        .unwrap_or_default();
    let wasm_in = |from: Instant, to: Instant| -> Vec<Duration> {
        wasm.iter()
            .filter(|c| c.sent >= from && c.answered <= to && c.status == 200)
            .map(|c| c.latency())
            .collect()
    };
    let first_seen = seen.iter().map(|c| c.sent).min().unwrap_or(stopping);
    let mut wasm_before = wasm_in(first_seen, stopping);
    let mut wasm_during = wasm_in(exited, starting);
    let health_down: Vec<&Health> = healths
        .iter()
        .filter(|h| h.at >= exited && h.at + h.took <= starting)
        .collect();
    let health_before: Vec<&Health> = healths
        .iter()
        .filter(|h| h.at + h.took < stopping)
        .collect();
    let health_after: Vec<&Health> = healths
        .iter()
        .filter(|h| refilled.is_some_and(|at| h.at >= at))
        .collect();
    // The slowest /healthz answer in each phase: before the stop, while dockerd
    // stopped, down, while it started, after.
    let slowest = |from: Instant, to: Instant| {
        let took = healths
            .iter()
            .filter(|h| h.at >= from && h.at < to)
            .map(|h| h.took)
            .max()
            .unwrap_or_default();
        format!("{} ms", ms(took))
    };
    let end = Instant::now();
    let health_slowest = [
        slowest(first_seen, stopping),
        slowest(stopping, exited),
        slowest(exited, starting),
        slowest(starting, answers),
        slowest(answers, end),
    ]
    .join(" / ");

    report
        .row(
            "dockerd: SIGTERM to exit",
            format!("{} ms", ms(exited - stopping)),
        )
        .row(
            "outage (dockerd exited to started)",
            format!("{} ms", ms(starting - exited)),
        )
        .row(
            "dockerd: start to answering",
            format!("{} ms", ms(answers - starting)),
        )
        .row(
            "python calls in flight at SIGTERM / sent while dockerd stopped",
            format!("{in_flight} / {}", at_stop.len() - in_flight),
        )
        .row(
            "  of them 200 / 503",
            format!(
                "{} / {}",
                at_stop.iter().filter(|c| c.status == 200).count(),
                at_stop.iter().filter(|c| c.status == 503).count()
            ),
        )
        .row(
            "  in flight: answered at most this long after SIGTERM",
            format!("{} ms", ms(in_flight_end)),
        )
        .row(
            "  sent while stopping: slowest answer",
            format!("{} ms", ms(stopping_latency)),
        )
        .row(
            "  what the first and the last of them said",
            describe(
                &[at_stop.first(), at_stop.last()]
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect::<Vec<_>>(),
            ),
        )
        .row("python calls during the outage", down.len())
        .row(
            "  of them 503 \"Docker engine not reachable\"",
            down.iter()
                .filter(|c| c.status == 503 && c.message.contains(UNREACHABLE))
                .count(),
        )
        .row(
            "time to 503 (max over calls)",
            format!("{} ms", ms(time_to_503)),
        )
        .row(
            "503 latency during the outage p50 / max",
            format!(
                "{} / {} ms",
                ms(quantile(&mut down_latency, 0.5)),
                ms(quantile(&mut down_latency, 1.0))
            ),
        )
        .row("wasm calls (all phases)", wasm.len())
        .row(
            "wasm calls not 200",
            wasm.iter().filter(|c| c.status != 200).count(),
        )
        .row(
            "wasm p50 / p99 before",
            format!(
                "{} / {} ms ({} calls)",
                ms(quantile(&mut wasm_before, 0.5)),
                ms(quantile(&mut wasm_before, 0.99)),
                wasm_before.len()
            ),
        )
        .row(
            "wasm p50 / p99 during the outage",
            format!(
                "{} / {} ms ({} calls)",
                ms(quantile(&mut wasm_during, 0.5)),
                ms(quantile(&mut wasm_during, 0.99)),
                wasm_during.len()
            ),
        )
        .row(
            "/healthz during the outage: readings, docker.reachable = false",
            format!(
                "{} / {}",
                health_down.len(),
                health_down
                    .iter()
                    .filter(|h| h.status == 200 && h.reachable == Some(false))
                    .count()
            ),
        )
        .row(
            "/healthz slowest answer: before / stopping / down / starting / after",
            health_slowest,
        )
        .row(
            "dockerd started to first python 200",
            first_ok.map_or("never".into(), |t| format!("{} ms", ms(t))),
        )
        .row(
            "dockerd started to pool back at min_warm",
            refilled.map_or("never".into(), |at| format!("{} ms", ms(at - starting))),
        )
        .row(
            "python calls not 200 after the engine answered",
            format!("{} {}", refused_after.len(), describe(&refused_after)),
        );

    // The pool after: dead containers discarded, and none of the old engine's left.
    let after = pool(&server, "pyecho").await;
    report.row("pool destroyed by reason", &after["destroyed"]);
    let leftovers = within(Duration::from_secs(10), async || {
        let now = pool(&server, "pyecho").await;
        let live = ["idle", "busy", "starting"]
            .iter()
            .map(|k| now[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        containers_of(&server).len() as u64 == live
    })
    .await;
    report.row(
        "containers left of the old engine",
        if leftovers.is_some() { "none" } else { "some" },
    );
    report.print();

    // What must hold.
    assert!(
        before_stop.iter().all(|c| c.status == 200) && !before_stop.is_empty(),
        "python calls failed before the engine stopped: {}",
        describe(
            &before_stop
                .iter()
                .copied()
                .filter(|c| c.status != 200)
                .collect::<Vec<_>>()
        )
    );
    assert!(!down.is_empty(), "no python call ran during the outage");
    let wrong: Vec<&Seen> = down
        .iter()
        .copied()
        .filter(|c| c.status != 503 || !c.message.contains(UNREACHABLE) || c.latency() > FAIL_FAST)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} python calls during the outage did not answer 503 \"{UNREACHABLE}\" within \
         {FAIL_FAST:?}: {}",
        wrong.len(),
        down.len(),
        describe(&wrong)
    );
    let wrong: Vec<&Seen> = at_stop
        .iter()
        .copied()
        .filter(|c| {
            !(c.status == 200 || c.status == 503 && c.message.contains(UNREACHABLE))
                || c.answered > exited + FAIL_FAST
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "python calls in flight when the engine stopped ended otherwise than 200 or 503 \
         \"{UNREACHABLE}\" within {FAIL_FAST:?} of dockerd's exit: {}",
        describe(&wrong)
    );
    let broken: Vec<&Seen> = python
        .iter()
        .copied()
        .filter(|c| c.status != 200 && c.status != 503)
        .collect();
    assert!(
        broken.is_empty(),
        "python calls answered other than 200 or 503 (a dead container handed to a call \
         answers 502): {}",
        describe(&broken)
    );
    let not_ok: Vec<&Seen> = wasm.iter().copied().filter(|c| c.status != 200).collect();
    assert!(
        not_ok.is_empty(),
        "wasm calls failed while the engine was away: {}",
        describe(&not_ok)
    );
    assert!(
        !wasm_during.is_empty(),
        "no wasm call ran during the outage"
    );

    assert!(
        health_before
            .iter()
            .all(|h| h.status == 200 && h.reachable == Some(true)),
        "/healthz did not say the engine was reachable before the stop"
    );
    assert!(
        !health_down.is_empty()
            && health_down
                .iter()
                .all(|h| h.status == 200 && h.reachable == Some(false) && h.took <= FAIL_FAST * 2),
        "/healthz did not answer promptly that the engine was unreachable during the outage"
    );
    assert!(
        first_success.is_some(),
        "container calls never worked again after the engine came back\n{}",
        server.log()
    );
    assert!(
        refilled.is_some(),
        "the pool never got back to min_warm = {MIN_WARM}\n{}",
        server.log()
    );
    assert!(
        !health_after.is_empty()
            && health_after
                .iter()
                .all(|h| h.status == 200 && h.reachable == Some(true)),
        "/healthz did not say the engine was reachable again"
    );
    let failed_after: Vec<&Seen> = settled_calls
        .iter()
        .copied()
        .filter(|c| c.status != 200)
        .collect();
    assert!(
        !settled_calls.is_empty() && failed_after.is_empty(),
        "python calls failed after the engine was back ({} of {}): {}",
        failed_after.len(),
        settled_calls.len(),
        describe(&failed_after)
    );
    assert!(
        leftovers.is_some(),
        "containers of the lost engine were left behind: {} on the engine, pool {after}",
        containers_of(&server).len()
    );

    // The records of the 503s say `failed` with the reason (written behind: wait).
    let ids: Vec<String> = down
        .iter()
        .chain(at_stop.iter())
        .filter(|c| c.status == 503)
        .filter_map(|c| c.call_id.clone())
        .take(50)
        .collect();
    assert!(!ids.is_empty(), "the 503 answers carried no call id");
    let http = client();
    for id in ids {
        let recorded = within(Duration::from_secs(10), async || {
            let call: Value = match http
                .get(server.url(&format!("/v1/calls/{id}")))
                .send()
                .await
            {
                Ok(response) => response.json().await.unwrap_or(Value::Null),
                Err(_) => return false,
            };
            call["status"] == "failed"
                && call["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(UNREACHABLE))
        })
        .await;
        assert!(
            recorded.is_some(),
            "call {id}'s record does not say failed with \"{UNREACHABLE}\""
        );
    }
}
