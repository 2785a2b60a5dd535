//! Slow and dying functions at scale: many calls at once of a function that sleeps
//! past its deadline, while other clients keep calling a fast function.
//!
//! What must hold: every slow call ends `timeout` (504, and its record says so) at its
//! deadline, neither before it nor long after (±100 ms; the distribution of how far
//! past it each call ended is reported, from the call's record and as its client saw
//! it); the fast function's calls all succeed, none of them stuck behind the slow
//! ones; afterwards no instance is busy, starting or waited for, and a second round
//! of slow calls finds every place free again (a leaked instance would hold one).
//! The Python variant also kills each container at its deadline and leaves none
//! beyond `min_warm`.
//!
//! Short (CI): 50 slow wasm calls at once (two rounds) and 6 slow Python calls. Full
//! (`NEWT_FAULTS=full`): 200 wasm (issue 13) and 16 Python calls: containers are
//! heavier, and 16 already hold this machine's two cores busy starting them. The
//! Python half needs Docker; without an engine it is skipped with a printed reason
//! (unless `NEWT_REQUIRE_DOCKER=1`).

use crate::load::tail;
use crate::support::{
    Report, Scale, at_rest, call_id, deploy, exclusive, get_json, ms, pool, probe, quantile, within,
};
use newt_tests::{Server, containers_of, docker_available, fixture, tar_gz};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The slow wasm function's deadline.
const WASM_TIMEOUT: Duration = Duration::from_millis(1000);
/// The slow Python function's deadline: a cold container's start is inside it.
const PY_TIMEOUT: Duration = Duration::from_millis(3000);
/// How far from its deadline a slow call may end (issue 13).
const TOLERANCE: Duration = Duration::from_millis(100);
/// Clients calling the fast function in a closed loop throughout.
const FAST_CLIENTS: usize = 4;
/// How long the fast clients run alone first, for their undisturbed latency.
const BASELINE: Duration = Duration::from_secs(2);

/// A Python function that sleeps `event["sleep"]` seconds: past any deadline given.
const PY_SLEEPY: &str =
    "import time\n\ndef handler(event):\n    time.sleep(event[\"sleep\"])\n    return event\n";

/// How one slow call ended.
struct Ended {
    status: u16,
    /// From sending the request to the end of its answer, as the client saw it.
    seen: Duration,
    /// The call's record: its status and `finished_at - started_at`.
    record: Option<(String, Duration)>,
    call_id: Option<String>,
}

/// Fires `calls` calls of `name` at once with `input`, each on its own connection
/// (opened beforehand, so the client's clock starts with the request, not with a
/// connection queued behind the others), and reads each call's record once the call
/// has ended.
async fn slow_round(server: &Server, name: &str, input: &str, calls: usize) -> Vec<Ended> {
    let url = server.url(&format!("/v1/functions/{name}/invoke"));
    let health = server.url("/healthz");
    let together = Arc::new(tokio::sync::Barrier::new(calls));
    let sent: Vec<_> = (0..calls)
        .map(|_| {
            let (url, health, input) = (url.clone(), health.clone(), input.to_string());
            let together = together.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("an HTTP client");
                let opened = http.get(&health).send().await;
                let _ = opened
                    .unwrap_or_else(|e| panic!("opening a connection: {e}"))
                    .bytes()
                    .await;
                together.wait().await;
                let begun = Instant::now();
                let response = http
                    .post(&url)
                    .body(input)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("a slow call: {e}"));
                let status = response.status().as_u16();
                let call_id = call_id(&response);
                let _ = response.bytes().await;
                Ended {
                    status,
                    seen: begun.elapsed(),
                    record: None,
                    call_id,
                }
            })
        })
        .collect();
    let mut ended = Vec::with_capacity(calls);
    for call in futures::future::join_all(sent).await {
        ended.push(call.expect("a slow call's task panicked"));
    }
    // Records are written behind the answers: wait (bounded) for each to be final.
    for call in &mut ended {
        let Some(id) = &call.call_id else { continue };
        let mut record = None;
        let found = within(Duration::from_secs(10), async || {
            let view = get_json(server, &format!("/v1/calls/{id}")).await;
            let status = view["status"].as_str().unwrap_or_default().to_string();
            let final_ = matches!(status.as_str(), "done" | "failed" | "timeout" | "cancelled");
            if final_ {
                let took = view["duration_ms"].as_u64().map(Duration::from_millis);
                record = took.map(|took| (status, took));
            }
            final_
        })
        .await
        .is_some();
        if found {
            call.record = record;
        }
    }
    ended
}

/// The calls of `ended` that broke the promise: not a 504 with a `timeout` record
/// ending within [`TOLERANCE`] of `deadline`, by the record's clock and the client's.
fn broken(ended: &[Ended], deadline: Duration) -> Vec<String> {
    let early = deadline.saturating_sub(TOLERANCE);
    // The record's times are whole milliseconds.
    let late = deadline + TOLERANCE + Duration::from_millis(1);
    ended
        .iter()
        .filter_map(|call| {
            let on_time = |d: Duration| d >= early && d <= late;
            let ok = call.status == 504
                && call
                    .record
                    .as_ref()
                    .is_some_and(|(status, took)| status == "timeout" && on_time(*took))
                && on_time(call.seen);
            (!ok).then(|| {
                format!(
                    "call {:?}: {} after {} ms, record {:?}",
                    call.call_id,
                    call.status,
                    call.seen.as_millis(),
                    call.record
                )
            })
        })
        .collect()
}

/// min / p50 / p99 / max of how far past `deadline` each of `took` ended, in ms
/// (negative: before it).
fn overshoot(took: impl Iterator<Item = Duration>, deadline: Duration) -> String {
    let mut after: Vec<Duration> = took.collect();
    if after.is_empty() {
        return "none".into();
    }
    let before = after.iter().filter(|d| **d < deadline).count();
    let signed = |d: Duration| {
        if d >= deadline {
            ms(d - deadline)
        } else {
            format!("-{}", ms(deadline - d))
        }
    };
    format!(
        "{} / {} / {} / {}{}",
        signed(quantile(&mut after, 0.0)),
        signed(quantile(&mut after, 0.5)),
        signed(quantile(&mut after, 0.99)),
        signed(quantile(&mut after, 1.0)),
        if before > 0 {
            format!(" ({before} before the deadline)")
        } else {
            String::new()
        }
    )
}

/// Clients calling `name` in a closed loop until `stop` is set; returns each call's
/// latency with whether it ran while slow calls were in flight (`busy`), and what went
/// wrong.
async fn fast_clients(
    server: &Server,
    name: &str,
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> (Vec<(bool, Duration)>, Vec<String>) {
    let url = server.url(&format!("/v1/functions/{name}/invoke"));
    let clients = (0..FAST_CLIENTS).map(|_| {
        let (url, busy, stop) = (url.clone(), busy.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client");
            let (mut took, mut errors) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let during = busy.load(Ordering::Relaxed);
                let begun = Instant::now();
                match http.post(&url).body("fast").send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.bytes().await;
                        match body {
                            Ok(body) if status == 200 && body == "fast" => {
                                took.push((during, begun.elapsed()));
                            }
                            Ok(body) => {
                                errors.push(format!("{status} {}", String::from_utf8_lossy(&body)))
                            }
                            Err(e) => errors.push(format!("reading an answer: {e}")),
                        }
                    }
                    Err(e) => {
                        errors.push(format!("{e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (took, errors)
        })
    });
    let mut took = Vec::new();
    let mut errors = Vec::new();
    for client in futures::future::join_all(clients).await {
        let (t, e) = client.expect("a fast client panicked");
        took.extend(t);
        errors.extend(e);
    }
    (took, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_end_at_their_deadline_and_fast_calls_go_on() {
    let _machine = exclusive().await;
    let scale = Scale::get();
    let slow_calls = scale.pick(50, 200);
    let py_calls = scale.pick(6, 16);

    let server = Server::start();
    deploy(
        &server,
        "fast",
        fixture!("echo").to_vec(),
        "&preload=function&min_warm=2",
    )
    .await;
    // Room for every slow call at once: none waits in a queue, each has an instance.
    deploy(
        &server,
        "sleepy",
        fixture!("sleep").to_vec(),
        &format!(
            "&timeout_ms={}&preload=function&min_warm=0&max_instances={slow_calls}&max_queue=0",
            WASM_TIMEOUT.as_millis()
        ),
    )
    .await;

    let (busy, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let fast = fast_clients(&server, "fast", busy.clone(), stop.clone());
    let slow = async {
        tokio::time::sleep(BASELINE).await;
        busy.store(true, Ordering::Relaxed);
        let first = slow_round(&server, "sleepy", "{}", slow_calls).await;
        // A second round finds every place free again if the first left none taken.
        let second = slow_round(&server, "sleepy", "{}", slow_calls).await;
        busy.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        (first, second)
    };
    let ((fast_took, fast_errors), (first, second)) =
        tokio::time::timeout(Duration::from_secs(120), futures::future::join(fast, slow))
            .await
            .expect("the wasm rounds ended within 120 s");

    let mut failures = Vec::new();
    let wasm: Vec<&Ended> = first.iter().chain(&second).collect();
    let wasm_broken = broken(&first, WASM_TIMEOUT)
        .into_iter()
        .chain(broken(&second, WASM_TIMEOUT))
        .collect::<Vec<_>>();
    if !wasm_broken.is_empty() {
        failures.push(format!(
            "{} of {} slow wasm calls did not end `timeout` within {} ms of their deadline: {:?}",
            wasm_broken.len(),
            wasm.len(),
            TOLERANCE.as_millis(),
            &wasm_broken[..wasm_broken.len().min(5)]
        ));
    }
    if !fast_errors.is_empty() {
        failures.push(format!(
            "{} fast calls failed: {:?}",
            fast_errors.len(),
            &fast_errors[..fast_errors.len().min(5)]
        ));
    }
    let mut alone: Vec<Duration> = fast_took.iter().filter(|t| !t.0).map(|t| t.1).collect();
    let mut beside: Vec<Duration> = fast_took.iter().filter(|t| t.0).map(|t| t.1).collect();
    // Fast calls that waited for slow ones would take as long as the slow deadline.
    if beside.is_empty() || quantile(&mut beside, 0.99) >= WASM_TIMEOUT {
        failures.push(format!(
            "fast calls beside the slow ones: {} calls, p99 {} ms",
            beside.len(),
            ms(quantile(&mut beside, 0.99))
        ));
    }
    let sleepy_rest = within(Duration::from_secs(10), async || {
        at_rest(&pool(&server, "sleepy").await, 0)
    })
    .await
    .is_some();
    let sleepy_pool = pool(&server, "sleepy").await;
    if !sleepy_rest {
        failures.push(format!(
            "the slow function's pool is not at rest: {sleepy_pool}"
        ));
    }
    // Each timed-out instance was destroyed as such: none went back to the pool.
    if sleepy_pool["destroyed"]["timeout"] != wasm.len() as u64 {
        failures.push(format!(
            "{} slow wasm calls timed out but the pool destroyed {}",
            wasm.len(),
            sleepy_pool["destroyed"]
        ));
    }

    let mut report = Report::new("Slow and dying functions at scale");
    report
        .row(
            "slow wasm calls at once (sleep past a 1000 ms deadline)",
            format!("{slow_calls}, two rounds"),
        )
        .row(
            "slow wasm calls ending 504 `timeout`",
            format!(
                "{} of {}",
                wasm.iter()
                    .filter(
                        |c| c.status == 504 && c.record.as_ref().is_some_and(|r| r.0 == "timeout")
                    )
                    .count(),
                wasm.len()
            ),
        )
        .row(
            "wasm: past the deadline by the record, min / p50 / p99 / max (ms)",
            overshoot(
                wasm.iter().filter_map(|c| c.record.as_ref().map(|r| r.1)),
                WASM_TIMEOUT,
            ),
        )
        .row(
            "wasm: past the deadline as the client saw it, min / p50 / p99 / max (ms)",
            overshoot(wasm.iter().map(|c| c.seen), WASM_TIMEOUT),
        )
        .row(
            "fast calls alone: count, p50 / p99 (ms)",
            format!(
                "{}, {} / {}",
                alone.len(),
                ms(quantile(&mut alone, 0.5)),
                ms(quantile(&mut alone, 0.99))
            ),
        )
        .row(
            "fast calls beside the slow ones: count, p50 / p99 / max (ms)",
            format!(
                "{}, {} / {} / {}",
                beside.len(),
                ms(quantile(&mut beside, 0.5)),
                ms(quantile(&mut beside, 0.99)),
                ms(quantile(&mut beside, 1.0))
            ),
        )
        .row("fast calls failed", fast_errors.len())
        .row(
            "slow wasm pool after (idle/busy/starting/waiting), destroyed",
            format!(
                "{}/{}/{}/{}, {}",
                sleepy_pool["idle"],
                sleepy_pool["busy"],
                sleepy_pool["starting"],
                sleepy_pool["waiting"],
                sleepy_pool["destroyed"]
            ),
        );

    if docker_available() {
        python_round(&server, py_calls, &mut report, &mut failures).await;
    } else {
        report.row("Python", "skipped: no Docker engine answers");
    }
    report.print();
    assert!(
        failures.is_empty(),
        "{}\nserver log (tail):\n{}",
        failures.join("\n"),
        tail(&server.log(), 40)
    );
}

/// The Python variant: `calls` calls at once that sleep past their deadline, half of
/// them on warm containers and the rest on containers started for them (the deadline
/// covers the start); each container is killed at the deadline, and once the pool
/// has refilled only `min_warm` are left.
async fn python_round(
    server: &Server,
    calls: usize,
    report: &mut Report,
    failures: &mut Vec<String>,
) {
    let min_warm = calls as u64 / 2;
    deploy(
        server,
        "pysleepy",
        tar_gz(&[("main.py", PY_SLEEPY.as_bytes())]),
        &format!(
            "&runtime=python&timeout_ms={}&preload=function&min_warm={min_warm}\
             &max_instances={calls}&max_queue=0&keep_alive=2s",
            PY_TIMEOUT.as_millis()
        ),
    )
    .await;
    let warm = within(Duration::from_secs(120), async || {
        at_rest(&pool(server, "pysleepy").await, min_warm)
    })
    .await
    .is_some();
    assert!(
        warm,
        "the Python function never had {min_warm} warm containers"
    );

    let warm_containers = containers_of(server);
    let ended = tokio::time::timeout(
        Duration::from_secs(120),
        slow_round(server, "pysleepy", r#"{"sleep":60}"#, calls),
    )
    .await
    .expect("the Python round ended within 120 s");
    let broken = broken(&ended, PY_TIMEOUT);
    if !broken.is_empty() {
        failures.push(format!(
            "{} of {} slow Python calls did not end `timeout` within {} ms of their deadline: {:?}",
            broken.len(),
            ended.len(),
            TOLERANCE.as_millis(),
            &broken[..broken.len().min(5)]
        ));
    }
    // Each timed-out container is killed and removed (the warm ones ran a call each,
    // so none of them may be left); the pool refills min_warm with new ones.
    let started = Instant::now();
    let killed = within(Duration::from_secs(60), async || {
        let now = containers_of(server);
        !warm_containers.iter().any(|c| now.contains(c))
    })
    .await
    .is_some();
    let killed_in = started.elapsed();
    if !killed {
        failures.push("containers that ran a timed-out call were not removed in 60 s".into());
    }
    let cleaned = within(Duration::from_secs(60), async || {
        containers_of(server).len() as u64 == min_warm
            && at_rest(&pool(server, "pysleepy").await, min_warm)
    })
    .await
    .is_some();
    let cleaned_in = started.elapsed();
    let py_pool = pool(server, "pysleepy").await;
    let left = containers_of(server).len();
    // At least every warm container ran a call to its deadline and was destroyed for
    // it (a cold one's start may itself run out the deadline).
    if py_pool["destroyed"]["timeout"].as_u64().unwrap_or(0) < min_warm {
        failures.push(format!(
            "{min_warm} warm containers ran timed-out calls, the pool destroyed {}",
            py_pool["destroyed"]
        ));
    }
    if !cleaned {
        failures.push(format!(
            "{left} Python containers left 60 s after the deadline (min_warm {min_warm}): {py_pool}"
        ));
    }
    // Nothing in the pool that a probe's call could not use.
    let check = probe()
        .post(server.url("/v1/functions/pysleepy/invoke"))
        .body(r#"{"sleep":0}"#)
        .send()
        .await
        .map(|r| r.status().as_u16());
    if !matches!(check, Ok(200)) {
        failures.push(format!("a quick call after the round: {check:?}"));
    }
    report
        .row(
            "slow Python calls at once (sleep past a 3000 ms deadline)",
            format!("{calls} ({min_warm} on warm containers)"),
        )
        .row(
            "slow Python calls ending 504 `timeout`",
            format!(
                "{} of {}",
                ended
                    .iter()
                    .filter(
                        |c| c.status == 504 && c.record.as_ref().is_some_and(|r| r.0 == "timeout")
                    )
                    .count(),
                ended.len()
            ),
        )
        .row(
            "Python: past the deadline by the record, min / p50 / p99 / max (ms)",
            overshoot(
                ended.iter().filter_map(|c| c.record.as_ref().map(|r| r.1)),
                PY_TIMEOUT,
            ),
        )
        .row(
            "Python: past the deadline as the client saw it, min / p50 / p99 / max (ms)",
            overshoot(ended.iter().map(|c| c.seen), PY_TIMEOUT),
        )
        .row(
            "Python: every container that ran a timed-out call removed within",
            format!("{:.1} s of the last answer", killed_in.as_secs_f64()),
        )
        .row(
            "Python containers after (min_warm: half the calls), and how soon",
            format!("{left}, {:.1} s", cleaned_in.as_secs_f64()),
        )
        .row(
            "Python pool: containers created, destroyed by reason",
            format!("{}, {}", py_pool["created"], py_pool["destroyed"]),
        );
}
