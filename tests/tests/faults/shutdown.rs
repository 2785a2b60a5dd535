//! Restarts under change: `SIGTERM` while a sync call, two running async calls (one
//! shorter than the shutdown grace, one longer), a queued async call and a Python
//! image build are in flight. What must hold: the sync call's client gets its answer
//! within the grace; the async call that fits the grace ends `done` before the exit;
//! the one that outlasts it is left `running` in the store and runs again after the
//! restart (`attempts` 2); the queued one is not started at shutdown (it stays
//! `pending`) and runs after the restart; the build is not marked failed but left
//! `pending`, and the restarted server builds it.
//!
//! Short and full runs are the same scenario (it is about order, not volume): ~25 s,
//! plus the Python base image the first time it is built on a machine.

use crate::crash::{integrity_check, python_bundle};
use crate::support::{Report, call_id, client, deploy, exclusive, ms};
use newt_tests::{Server, docker_available, fixture, tar_gz};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The shutdown grace the server runs with, in seconds: longer than `nap3`, shorter
/// than `nap8`.
const GRACE_SECS: u64 = 5;

/// A python bundle whose one requirement is a source distribution (in `wheels/`)
/// whose setup.py sleeps 9 s the first time pip runs it in a build: an image build
/// still running when the server exits at the end of the grace. Unique per run: an
/// image of the same bundle would be found, not built.
fn slow_build_bundle() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let main_py = format!("# run {nanos}\ndef handler(event):\n    return {{'built': True}}\n");
    let setup_py = r#"
import os, time
marker = "/tmp/newt-slowpkg-slept"
if not os.path.exists(marker):
    time.sleep(9)
    try:
        open(marker, "w").close()
    except OSError:
        pass
from setuptools import setup
setup(name="slowpkg", version="0.1", py_modules=[])
"#;
    let pkg_info = "Metadata-Version: 1.0\nName: slowpkg\nVersion: 0.1\n";
    let sdist = tar_gz(&[
        ("slowpkg-0.1/setup.py", setup_py.as_bytes()),
        ("slowpkg-0.1/PKG-INFO", pkg_info.as_bytes()),
    ]);
    tar_gz(&[
        ("main.py", main_py.as_bytes()),
        ("requirements.txt", b"slowpkg\n"),
        ("wheels/slowpkg-0.1.tar.gz", &sdist),
    ])
}

/// Accepts an async call of `name`; its id.
async fn accept(server: &Server, name: &str, body: &str) -> String {
    let response = client()
        .post(server.url(&format!("/v1/functions/{name}/invoke?async=true")))
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("async call of {name}: {e}"));
    assert_eq!(response.status(), 202, "async call of {name}");
    call_id(&response).expect("x-newt-call-id")
}

/// A call's record (`GET /v1/calls/{id}`).
async fn call(server: &Server, id: &str) -> Value {
    client()
        .get(server.url(&format!("/v1/calls/{id}")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("reading call {id}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("reading call {id}: {e}"))
}

/// Polls until `check` holds, failing with `what` and the server log after `secs`.
async fn until(server: &Server, secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {secs} s:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the database in `home` holds for call `id`: (status, attempts).
fn stored_call(home: &Path, id: &str) -> (String, u32) {
    rusqlite::Connection::open(home.join("newt.db"))
        .and_then(|conn| {
            conn.query_row(
                "SELECT status, attempts FROM calls WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
        .unwrap_or_else(|e| panic!("reading call {id} from the database: {e}"))
}

/// The status of the newest version of function `name` in the database in `home`.
fn stored_version_status(home: &Path, name: &str) -> String {
    rusqlite::Connection::open(home.join("newt.db"))
        .and_then(|conn| {
            conn.query_row(
                "SELECT status FROM function_versions WHERE name = ?1 \
                 ORDER BY version DESC LIMIT 1",
                [name],
                |row| row.get(0),
            )
        })
        .unwrap_or_else(|e| panic!("reading function {name} from the database: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_fits_the_grace_and_resumes_the_rest_after_restart() {
    let _machine = exclusive().await;
    let python = docker_available();
    let grace = GRACE_SECS.to_string();
    // Two async slots: the short and the long call take them, the third waits.
    let args = ["--shutdown-grace", &grace, "--async-concurrency", "2"];
    let mut server = Server::start_with_args(&args);
    let home = server.keep_home().expect("a temporary home");
    deploy(&server, "nap3", fixture!("nap3").to_vec(), "").await;
    deploy(&server, "nap8", fixture!("nap8").to_vec(), "").await;
    deploy(&server, "echo", fixture!("echo").to_vec(), "").await;
    if python {
        // The base image is ready before the build the signal interrupts.
        deploy(&server, "pyecho", python_bundle(), "&runtime=python").await;
    }

    let short = accept(&server, "nap3", "").await;
    let long = accept(&server, "nap8", "").await;
    until(&server, 30, "both async calls running", async || {
        call(&server, &short).await["status"] == "running"
            && call(&server, &long).await["status"] == "running"
    })
    .await;
    let queued = accept(&server, "echo", "queued").await;
    let sync_url = server.url("/v1/functions/nap3/invoke");
    let sync = tokio::spawn(async move {
        let response = client().post(sync_url).send().await;
        (response.map(|r| r.status().as_u16()), Instant::now())
    });
    let build_pending_at_signal = if python {
        let response = client()
            .put(server.url("/v1/functions/slowbuild?runtime=python"))
            .body(slow_build_bundle())
            .send()
            .await
            .expect("deploying slowbuild");
        assert_eq!(response.status(), 202, "a python deploy answers at once");
        // Let the build start its install step.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let function: Value = client()
            .get(server.url("/v1/functions/slowbuild"))
            .send()
            .await
            .expect("reading slowbuild")
            .json()
            .await
            .expect("slowbuild as JSON");
        Some(function["status"] == "pending")
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
        None
    };
    assert_eq!(call(&server, &queued).await["status"], "pending");

    let signalled = Instant::now();
    let status = tokio::task::block_in_place(|| server.terminate());
    let exited = signalled.elapsed();
    assert!(status.success(), "newt exited with {status}");
    let (sync_status, sync_answered) = sync.await.expect("the sync call's task");
    let sync_answer = sync_answered.saturating_duration_since(signalled);

    // What the shutdown left in the store.
    let short_at_exit = stored_call(home.path(), &short);
    let long_at_exit = stored_call(home.path(), &long);
    let queued_at_exit = stored_call(home.path(), &queued);
    let build_at_exit = python.then(|| stored_version_status(home.path(), "slowbuild"));
    let integrity = integrity_check(home.path());

    // The restart.
    let restarting = Instant::now();
    let server = tokio::task::block_in_place(|| Server::start_in(home.path(), &args));
    let finished = |id: &str| {
        let id = id.to_string();
        let server = &server;
        async move {
            until(server, 60, &format!("call {id} finished"), async || {
                let status = call(server, &id).await["status"].clone();
                status == "done" || status == "failed" || status == "timeout"
            })
            .await;
            (call(server, &id).await, restarting.elapsed())
        }
    };
    let (queued_after, queued_done) = finished(&queued).await;
    let (long_after, long_done) = finished(&long).await;
    let short_after = call(&server, &short).await;
    let built = if python {
        until(
            &server,
            600,
            "slowbuild built after the restart",
            async || {
                let function: Value = client()
                    .get(server.url("/v1/functions/slowbuild"))
                    .send()
                    .await
                    .expect("reading slowbuild")
                    .json()
                    .await
                    .expect("slowbuild as JSON");
                function["status"] != "pending"
            },
        )
        .await;
        let built_in = restarting.elapsed();
        let response = client()
            .post(server.url("/v1/functions/slowbuild/invoke"))
            .body("{}")
            .send()
            .await
            .expect("calling slowbuild");
        Some((response.status().as_u16(), built_in))
    } else {
        None
    };

    let mut report = Report::new("SIGTERM during calls and a build");
    report
        .row("shutdown grace (s)", GRACE_SECS)
        .row("SIGTERM to exit (ms)", ms(exited))
        .row(
            "sync call (3 s): answer, after SIGTERM (ms)",
            format!("{sync_status:?}, {}", ms(sync_answer)),
        )
        .row(
            "async 3 s call at exit / after restart",
            format!(
                "{} (attempt {}) / {} (attempts {})",
                short_at_exit.0, short_at_exit.1, short_after["status"], short_after["attempts"]
            ),
        )
        .row(
            "async 8 s call at exit / after restart",
            format!(
                "{} (attempt {}) / {} (attempts {}), done {} ms after the restart",
                long_at_exit.0,
                long_at_exit.1,
                long_after["status"],
                long_after["attempts"],
                ms(long_done)
            ),
        )
        .row(
            "queued async call at exit / after restart",
            format!(
                "{} / {} (attempts {}), done {} ms after the restart",
                queued_at_exit.0,
                queued_after["status"],
                queued_after["attempts"],
                ms(queued_done)
            ),
        )
        .row("integrity_check after the exit", &integrity);
    match (&build_at_exit, &built, build_pending_at_signal) {
        (Some(at_exit), Some((answer, built_in)), Some(pending)) => {
            report
                .row("python build pending at SIGTERM", pending)
                .row("python build at exit", at_exit)
                .row(
                    "python build ready after restart (ms) / its first call",
                    format!("{} / {answer}", ms(*built_in)),
                );
        }
        _ => {
            report.row("python build", "skipped: no Docker engine");
        }
    }
    report.print();

    assert_eq!(
        sync_status.as_ref().ok(),
        Some(&200),
        "the sync call in flight at SIGTERM is answered"
    );
    assert!(
        sync_answer <= Duration::from_secs(GRACE_SECS),
        "the sync call was answered {sync_answer:?} after SIGTERM, past the grace"
    );
    assert_eq!(short_at_exit, ("done".to_string(), 1), "fits the grace");
    assert_eq!(
        long_at_exit,
        ("running".to_string(), 1),
        "outlasts the grace: left running for the next start, not cancelled or failed"
    );
    assert_eq!(
        queued_at_exit,
        ("pending".to_string(), 1),
        "not started at shutdown"
    );
    assert_eq!(integrity, "ok");
    assert_eq!(
        (&short_after["status"], &short_after["attempts"]),
        (&Value::from("done"), &Value::from(1))
    );
    assert_eq!(
        (&long_after["status"], &long_after["attempts"]),
        (&Value::from("done"), &Value::from(2)),
        "{long_after}"
    );
    assert_eq!(
        (&queued_after["status"], &queued_after["attempts"]),
        (&Value::from("done"), &Value::from(1)),
        "{queued_after}"
    );
    assert_eq!(queued_after["output"], "queued");
    if let (Some(at_exit), Some((answer, _))) = (build_at_exit, built) {
        assert_eq!(
            at_exit, "pending",
            "a build cut off by the shutdown is resumed"
        );
        assert_eq!(answer, 200, "the build resumed after the restart serves");
    }
    drop(server);
    if python {
        remove_images("newt-fn/slowbuild");
    }
}

/// Removes the images of `repository` (this scenario's unique builds), so runs do not
/// pile them up on the engine. Best effort: a leftover image is only disk.
fn remove_images(repository: &str) {
    let listed = std::process::Command::new("docker")
        .args(["images", "-q", repository])
        .output();
    let Ok(listed) = listed else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f"])
            .args(&ids)
            .output();
    }
}
