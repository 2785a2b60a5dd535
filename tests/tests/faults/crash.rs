//! Crash under load: steady sync and async calls of a wasm and a Python function,
//! `kill -9` of the server part-way, a restart on the same home, and then the account:
//! every call that got a 202 ends `done`, `failed` or `timeout` (none lost), the ones
//! run again say so (`attempts` > 1), the database passes `PRAGMA integrity_check`,
//! no container of the dead process is left, and how long the restart took to serve
//! and to finish what the dead process left. Also measured: how many records of sync
//! calls that had answered 200 the kill lost (they are written behind).
//!
//! Short (CI): 12 s of load, the kill at 4 s. Full (`NEWT_FAULTS=full`): 60 s, the
//! kill at 20 s, as issue 13 asks. The Python half needs Docker; without an engine it
//! is skipped with a printed reason (unless `NEWT_REQUIRE_DOCKER=1`).

use crate::support::{Report, Scale, call_id, client, deploy, exclusive, ms, quantile};
use newt_tests::{Server, containers_of, docker_available, fixture, tar_gz};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The Python function both fault scenarios deploy: sleeps `event["sleep"]` seconds
/// (0 when absent), then returns the event.
pub const PY_SOURCE: &str = r#"
import time

def handler(event):
    time.sleep((event or {}).get("sleep", 0) if isinstance(event, dict) else 0)
    return event
"#;

/// The Python function's bundle.
pub fn python_bundle() -> Vec<u8> {
    tar_gz(&[("main.py", PY_SOURCE.as_bytes())])
}

/// Every call record the server at `base` has, by id (summaries: status, attempts,
/// error), read page by page.
pub async fn all_calls(base: &str) -> HashMap<String, Value> {
    let http = client();
    let mut calls = HashMap::new();
    let mut before = None;
    loop {
        let mut url = format!("{base}/v1/calls?limit=1000");
        if let Some(num) = before {
            url.push_str(&format!("&before={num}"));
        }
        let page: Value = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("listing calls: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("listing calls: {e}"));
        let listed = page["calls"].as_array().cloned().unwrap_or_default();
        let Some(last) = listed.last() else {
            return calls;
        };
        before = last["num"].as_i64();
        for call in listed {
            let id = call["id"].as_str().unwrap_or_default().to_string();
            calls.insert(id, call);
        }
    }
}

/// The ids of the calls the server at `base` lists with `status` (at most 1000).
pub async fn ids_with_status(base: &str, status: &str) -> Option<HashSet<String>> {
    let page: Value = client()
        .get(format!("{base}/v1/calls?status={status}&limit=1000"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        page["calls"]
            .as_array()?
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// `PRAGMA integrity_check` of the database in `home`: "ok" when sound.
pub fn integrity_check(home: &Path) -> String {
    let path = home.join("newt.db");
    let conn = rusqlite::Connection::open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .unwrap_or_else(|e| panic!("integrity_check of {}: {e}", path.display()));
    rows.join("; ")
}

/// Whether a call status is final.
pub fn is_final(status: &str) -> bool {
    matches!(status, "done" | "failed" | "timeout" | "cancelled")
}

/// One function the load calls: its name, the body of each call, whether it runs in
/// a container.
#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    body: &'static str,
    python: bool,
}

/// What one sync call saw.
struct SyncCall {
    python: bool,
    sent: Instant,
    /// The call id when the server answered 200, else `None`.
    ok: Option<String>,
    answered: Instant,
    /// What went wrong, when something did: the status and body, or the error.
    failure: Option<String>,
}

/// When the crash happened and when the restarted server was up, for the phases.
#[derive(Default)]
struct Timeline {
    killed: Option<Instant>,
    restarted: Option<Instant>,
}

/// Which part of the run a sync call's failure belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Phase {
    /// Sent and failed before the kill.
    Before,
    /// Sent before the kill, in flight when it came.
    AtKill,
    /// Sent while the server was down (refused) or restarting.
    Down,
    /// Sent to the restarted server.
    After,
}

/// Everything the load recorded.
#[derive(Default)]
struct Tally {
    sync: Vec<SyncCall>,
    /// Accepted async calls: id, function, accepted before the kill.
    accepted: Vec<(String, &'static str, Instant)>,
    /// Async requests not accepted (refused while down, or an error answer), by
    /// whether the server was up.
    async_refused: usize,
}

/// Runs calls of `target` in a closed loop until `until`, each `pause` apart, sync or
/// async, against whatever server `base` names at the time.
async fn load(
    target: Target,
    is_async: bool,
    pause: Duration,
    until: Instant,
    base: Arc<RwLock<String>>,
    tally: Arc<Mutex<Tally>>,
) {
    let http = client();
    while Instant::now() < until {
        let url = {
            let base = base.read().unwrap();
            let query = if is_async { "?async=true" } else { "" };
            format!("{base}/v1/functions/{}/invoke{query}", target.name)
        };
        let sent = Instant::now();
        let answer = http.post(&url).body(target.body).send().await;
        let answered = Instant::now();
        let (id, failure) = match answer {
            Ok(r) if r.status().as_u16() == if is_async { 202 } else { 200 } => (call_id(&r), None),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                (None, Some(format!("{status} {body}")))
            }
            Err(e) => (None, Some(format!("{e:?}"))),
        };
        {
            let mut tally = tally.lock().unwrap();
            if is_async {
                match id {
                    Some(id) => tally.accepted.push((id, target.name, answered)),
                    None => tally.async_refused += 1,
                }
            } else {
                tally.sync.push(SyncCall {
                    python: target.python,
                    sent,
                    ok: id,
                    answered,
                    failure,
                });
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_accepted_call() {
    let _machine = exclusive().await;
    let scale = Scale::get();
    let run_for = scale.secs(12, 60);
    let kill_after = scale.secs(4, 20);
    let python = docker_available();

    let mut first = Server::start();
    let home = first.keep_home().expect("a temporary home");
    deploy(&first, "echo", fixture!("echo").to_vec(), "").await;
    deploy(&first, "nap", fixture!("nap").to_vec(), "").await;
    if python {
        deploy(
            &first,
            "pyecho",
            python_bundle(),
            "&runtime=python&min_warm=2",
        )
        .await;
    }

    let mut targets = vec![
        (
            Target {
                name: "echo",
                body: r#"{"n":1}"#,
                python: false,
            },
            false,
            Duration::from_millis(5),
        ),
        (
            Target {
                name: "nap",
                body: "",
                python: false,
            },
            true,
            Duration::from_millis(25),
        ),
    ];
    if python {
        targets.push((
            Target {
                name: "pyecho",
                body: r#"{"n":2}"#,
                python: true,
            },
            false,
            Duration::from_millis(20),
        ));
        targets.push((
            Target {
                name: "pyecho",
                body: r#"{"sleep":0.2}"#,
                python: true,
            },
            true,
            Duration::from_millis(50),
        ));
    }

    let base = Arc::new(RwLock::new(first.base.clone()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let until = started + run_for;
    let workers: Vec<_> = targets
        .iter()
        .map(|&(target, is_async, pause)| {
            tokio::spawn(load(
                target,
                is_async,
                pause,
                until,
                base.clone(),
                tally.clone(),
            ))
        })
        .collect();

    // The crash.
    tokio::time::sleep_until((started + kill_after).into()).await;
    let mut timeline = Timeline::default();
    // Taken before the signal: a call that fails from here on failed at the kill.
    let killed = Instant::now();
    timeline.killed = Some(killed);
    tokio::task::block_in_place(|| first.kill9());
    let integrity_after_crash = tokio::task::block_in_place(|| integrity_check(home.path()));
    let dead_containers: HashSet<String> = if python {
        tokio::task::block_in_place(|| containers_of(&first))
            .into_iter()
            .collect()
    } else {
        HashSet::new()
    };
    let accepted_before_kill: HashSet<String> = tally
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|(_, _, at)| *at < killed)
        .map(|(id, _, _)| id.clone())
        .collect();

    // The restart: process start to listening, to a first successful call.
    let restarting = Instant::now();
    let second = tokio::task::block_in_place(|| Server::start_in(home.path(), &[]));
    let listening = restarting.elapsed();
    *base.write().unwrap() = second.base.clone();
    let http = client();
    let first_call = loop {
        let answer = http
            .post(second.url("/v1/functions/echo/invoke"))
            .body("probe")
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            break restarting.elapsed();
        }
        assert!(
            restarting.elapsed() < Duration::from_secs(60),
            "no successful call within 60 s of the restart:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    timeline.restarted = Some(Instant::now());

    // Everything the dead process had accepted and not finished runs to the end.
    let recovered = loop {
        let pending = ids_with_status(&second.base, "pending").await;
        let running = ids_with_status(&second.base, "running").await;
        if let (Some(pending), Some(running)) = (pending, running)
            && !pending
                .iter()
                .chain(&running)
                .any(|id| accepted_before_kill.contains(id))
        {
            break restarting.elapsed();
        }
        assert!(
            restarting.elapsed() < Duration::from_secs(120),
            "async calls of the dead process still unfinished 120 s after the restart:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for worker in workers {
        worker.await.expect("a load worker");
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let accepted: HashSet<&str> = tally
        .accepted
        .iter()
        .map(|(id, _, _)| id.as_str())
        .collect();

    // The load stopped: every accepted call ends, within a bound.
    let settle = Instant::now();
    let calls = loop {
        let calls = all_calls(&second.base).await;
        let open = accepted
            .iter()
            .filter(|id| {
                calls
                    .get(**id)
                    .is_none_or(|c| !is_final(c["status"].as_str().unwrap_or_default()))
            })
            .count();
        if open == 0 || settle.elapsed() > Duration::from_secs(120) {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Async: accepted, how they ended, lost, run again.
    let mut ends: HashMap<String, usize> = HashMap::new();
    let mut lost = Vec::new();
    let mut duplicated = 0;
    let mut most_attempts = 0;
    for (id, _, _) in &tally.accepted {
        match calls.get(id) {
            Some(call) if is_final(call["status"].as_str().unwrap_or_default()) => {
                *ends
                    .entry(call["status"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
                let attempts = call["attempts"].as_u64().unwrap_or(0);
                most_attempts = most_attempts.max(attempts);
                if attempts > 1 {
                    duplicated += 1;
                }
            }
            other => lost.push((id.clone(), other.cloned())),
        }
    }

    // Sync: failures by phase, and records lost by the kill.
    let phase_of = |call: &SyncCall| {
        let killed = timeline.killed.expect("killed");
        let restarted = timeline.restarted.expect("restarted");
        if call.sent >= restarted {
            Phase::After
        } else if call.sent >= killed {
            Phase::Down
        } else if call.answered >= killed {
            Phase::AtKill
        } else {
            Phase::Before
        }
    };
    let mut failed: HashMap<Phase, usize> = HashMap::new();
    let mut failed_before = Vec::new();
    let (mut answered_before_kill, mut records_lost, mut records_missing_after) = (0, 0, 0);
    let mut sync_latency = Vec::new();
    for call in &tally.sync {
        let phase = phase_of(call);
        match &call.ok {
            None => {
                *failed.entry(phase).or_default() += 1;
                if phase == Phase::Before {
                    failed_before.push(call.failure.clone().unwrap_or_default());
                }
            }
            Some(id) => {
                let done = calls.get(id).is_some_and(|c| c["status"] == "done");
                if phase == Phase::Before {
                    answered_before_kill += 1;
                    sync_latency.push(call.answered - call.sent);
                    if !done {
                        records_lost += 1;
                    }
                } else if call.answered >= timeline.restarted.expect("restarted") && !done {
                    records_missing_after += 1;
                }
            }
        }
    }
    let left: Vec<String> = if python {
        tokio::task::block_in_place(|| containers_of(&second))
            .into_iter()
            .filter(|id| dead_containers.contains(id))
            .collect()
    } else {
        Vec::new()
    };

    let mut second = second;
    let stopped = tokio::task::block_in_place(|| second.terminate());
    let integrity_at_end = tokio::task::block_in_place(|| integrity_check(home.path()));

    let count = |phase| failed.get(&phase).copied().unwrap_or(0);
    let python_note = if python {
        "wasm and python"
    } else {
        "wasm only (no Docker engine)"
    };
    let mut report = Report::new("Crash under load (kill -9)");
    report
        .row("functions", python_note)
        .row(
            "load",
            format!(
                "{} s, kill -9 at {} s",
                run_for.as_secs(),
                kill_after.as_secs()
            ),
        )
        .row(
            "sync calls sent (wasm / python)",
            format!(
                "{} / {}",
                tally.sync.iter().filter(|c| !c.python).count(),
                tally.sync.iter().filter(|c| c.python).count()
            ),
        )
        .row("async calls accepted (202)", tally.accepted.len())
        .row(
            "  of them accepted before the kill",
            accepted_before_kill.len(),
        )
        .row(
            "async requests not accepted (server down)",
            tally.async_refused,
        )
        .row(
            "async completed: done / failed / timeout",
            format!(
                "{} / {} / {}",
                ends.get("done").copied().unwrap_or(0),
                ends.get("failed").copied().unwrap_or(0),
                ends.get("timeout").copied().unwrap_or(0)
            ),
        )
        .row("async lost", lost.len())
        .row(
            "async run again (attempts > 1)",
            format!("{duplicated} (most attempts: {most_attempts})"),
        )
        .row("sync failed before the kill", count(Phase::Before))
        .row("sync failed in flight at the kill", count(Phase::AtKill))
        .row(
            "sync failed while down (refused, restarting)",
            count(Phase::Down),
        )
        .row("sync failed after the restart", count(Phase::After))
        .row(
            "sync p99 before the kill (ms)",
            ms(quantile(&mut sync_latency, 0.99)),
        )
        .row(
            "sync records lost by kill -9",
            format!("{records_lost} of {answered_before_kill} answered 200 before the kill"),
        )
        .row("integrity_check after the kill", &integrity_after_crash)
        .row("integrity_check at the end", &integrity_at_end)
        .row(
            "containers of the dead process: at the kill / left",
            format!("{} / {}", dead_containers.len(), left.len()),
        )
        .row("restart: process start to listening (ms)", ms(listening))
        .row("restart: to the first successful call (ms)", ms(first_call))
        .row(
            "restart: to every call of the dead process finished (ms)",
            ms(recovered),
        );
    report.print();

    assert!(
        lost.is_empty(),
        "accepted async calls without a final status: {lost:?}\n{}",
        second.log()
    );
    // Neither function can fail by itself: a call that ended otherwise was failed by
    // the crash (as every async call running at a crash used to be).
    assert_eq!(
        ends.get("done").copied().unwrap_or(0),
        tally.accepted.len(),
        "accepted async calls that did not end done: {ends:?}"
    );
    assert!(
        most_attempts <= 2,
        "one crash started a call at most twice, yet a call has {most_attempts} attempts"
    );
    assert_eq!(integrity_after_crash, "ok");
    assert_eq!(integrity_at_end, "ok");
    assert!(
        left.is_empty(),
        "containers of the dead process still there: {left:?}"
    );
    assert!(
        failed_before.is_empty(),
        "sync calls failed before any fault: {failed_before:?}"
    );
    assert_eq!(
        count(Phase::After),
        0,
        "sync calls failed against the restarted server:\n{}",
        second.log()
    );
    assert_eq!(
        records_missing_after, 0,
        "calls of the restarted server answered 200 but not recorded done"
    );
    assert!(
        stopped.success(),
        "the restarted server exited with {stopped}"
    );
    // The dead server's handle goes last: dropping it removes every container of the
    // home, the restarted server's included.
    drop(first);
}
