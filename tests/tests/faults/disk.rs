//! Disk full: `NEWT_HOME` on a small tmpfs that the scenario mounts, filled to the last
//! page by a filler file, then freed again.
//!
//! What must hold: while the disk is full, a deploy answers 507 `insufficient_storage`
//! with a message that says so and what to do, and the function's previous version
//! keeps serving; sync calls keep answering (their records are written behind: those
//! that cannot be written are counted in `newt_call_records_lost_total`); an async
//! call is either accepted durably (202) or refused with 507, never accepted and
//! forgotten. The compiled-module cache is an optimisation: with room for a bundle and
//! its version but not for its compiled module, the deploy and its calls still work,
//! and the next start compiles and caches the module. No partial bundle or compiled
//! module is ever visible (no temporary file left, every blob hashes to its name). A
//! restart while the disk is full either serves or stops at once saying the disk is
//! full. Once the filler is removed, deploys, calls and async calls work again without
//! a restart; after a restart on the same home every accepted call has ended; and the
//! database passes `PRAGMA integrity_check`.
//!
//! Needs root (to mount); otherwise it is skipped with a printed reason. The server
//! runs without Docker (its `DOCKER_HOST` points nowhere): this is about NEWT_HOME,
//! and the Python base image, built under NEWT_HOME when missing, would not fit.
//! Short (CI): one fill of a 64 MiB tmpfs. Full (`NEWT_FAULTS=full`): three fills,
//! with more calls while full.

use crate::support::{Report, Scale, call_id, exclusive};
use newt_host::testing::TestServer;
use newt_tests::{fixture, newt_bin};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Size of the tmpfs NEWT_HOME lives on.
const TMPFS_MIB: u64 = 64;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an accepted async call gets to end once the disk has room again.
const SETTLE: Duration = Duration::from_secs(20);

/// The input every call sends (echo returns it).
const INPUT: &str = r#"{"disk":"full"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn disk_full() {
    let _machine = exclusive().await;
    let began = Instant::now();
    let scale = Scale::get();
    let Some(uid) = effective_uid() else {
        eprintln!("skipped: cannot read this process's uid from /proc/self/status");
        return;
    };
    if uid != 0 {
        eprintln!("skipped: mounting a tmpfs for NEWT_HOME needs root (uid is {uid})");
        return;
    }
    let tmpfs = match Tmpfs::mount(TMPFS_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let home = tmpfs.path().to_path_buf();
    // The server's log lives in its home: room for it is reserved beforehand (beyond
    // its end, so it reads as empty), so the log still tells what happened while the
    // disk was full.
    reserve_log(&home);
    let mut server = Some(start(&home));
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let mut outcomes = Outcomes::default();
    let mut accepted: Vec<String> = Vec::new();
    let mut base = server.as_ref().expect("started").base().to_string();

    // Before: a function with a version that works.
    let (status, body) = deploy(&client, &base, "echo", fixture!("echo").to_vec()).await;
    outcomes.add("before", "deploy echo", status, &body);
    assert_eq!(status, 201, "{body}\n{}", log(&server));
    let (status, body) = call(&client, &base, "echo").await;
    outcomes.add("before", "sync call", status, &body);
    assert_eq!(status, 200, "{body}");
    let (status, body) = accept(&client, &base, "echo").await;
    outcomes.add("before", "async accept", status, &body);
    assert_eq!(status, 202, "{body}\n{}", log(&server));
    accepted.push(body["call_id"].as_str().expect("a call id").to_string());

    let rounds = scale.pick(1, 3);
    let sync_calls = scale.pick(20, 500);
    let max_accepts = scale.pick(200, 1000);
    let mut report = Report::new("Disk full");
    report.row("tmpfs size (MiB)", TMPFS_MIB);
    let mut refused_accepts = 0;
    let mut sync_ok = 0;
    let mut sync_ids = Vec::new();
    let mut version = 1;
    let mut current_echo = fixture!("echo").to_vec();
    let mut many_digest = String::new();
    for round in 1..=rounds {
        let phase = format!("full #{round}");
        let filled = fill(&home, FILLER);
        report.row(&format!("{phase}: filler (MiB)"), filled >> 20);

        // Room for a bundle and its version, not for its compiled module (~40 times
        // the bundle): the module cache is an optimisation, so the deploy and its calls
        // work, and no partial artifact is left.
        let filler = std::fs::OpenOptions::new()
            .write(true)
            .open(home.join(FILLER))
            .expect("opening the filler");
        filler
            .set_len(filled - HOLE)
            .expect("freeing room in the filler");
        let many = many_functions(5000 + round as u32);
        let (status, body) = deploy(&client, &base, "many", many).await;
        outcomes.add(
            &phase,
            "deploy many (room for the bundle, not its compiled module)",
            status,
            &body,
        );
        assert_eq!(status, 201, "{body}\n{}", log(&server));
        many_digest = body["digest"].as_str().expect("a digest").to_string();
        let (status, body) = call(&client, &base, "many").await;
        outcomes.add(&phase, "sync call of many", status, &body);
        assert_eq!(status, 200, "{body}");
        assert!(
            artifacts_of(&home, &many_digest).is_empty(),
            "a compiled module was cached where it could not fit"
        );
        assert!(
            log(&server).contains("could not cache the compiled module"),
            "the cache write did not fail: the scenario did not test what it says"
        );
        fill(&home, FILLER_2);

        // A deploy of a new bundle: refused with 507, nothing changes.
        let (status, body) = deploy(&client, &base, "echo", bundle(round)).await;
        outcomes.add(&phase, "deploy echo (new bundle)", status, &body);
        assert_disk_full(status, &body, "the deploy of a new bundle");
        // The same bundle with other limits: stored already, only its version row is
        // new, and SQLite cannot write it.
        let (status, body) = deploy_query(
            &client,
            &base,
            "echo",
            "?timeout_ms=5000",
            current_echo.clone(),
        )
        .await;
        outcomes.add(
            &phase,
            "deploy echo (same bundle, new limits)",
            status,
            &body,
        );
        assert_disk_full(status, &body, "a deploy with new limits");
        let (status, body) = deploy(&client, &base, "other", bundle(100 + round)).await;
        outcomes.add(&phase, "deploy other (new function)", status, &body);
        assert_disk_full(status, &body, "the deploy of a new function");
        let detail = get(&client, &format!("{}/v1/functions/echo", base)).await;
        assert_eq!(detail.1["version"], version, "{}", detail.1);
        let other = get(&client, &format!("{}/v1/functions/other", base)).await;
        assert_eq!(
            other.0, 404,
            "a refused deploy left a function: {}",
            other.1
        );

        // Sync calls keep answering: their records are written behind.
        for _ in 0..sync_calls {
            let (status, body) = call(&client, &base, "echo").await;
            assert_eq!(status, 200, "a sync call on a full disk: {body}");
            assert_eq!(body["output"]["disk"], "full", "{body}");
            sync_ok += 1;
            if let Some(id) = body["call_id"].as_str() {
                sync_ids.push(id.to_string());
            }
        }
        outcomes.add(
            &phase,
            &format!("{sync_calls} sync calls"),
            200,
            &Value::String("all answered with their output".into()),
        );

        // Async calls: accepted only if durable. Those that still fit are accepted,
        // then the first that does not is refused with 507.
        let mut round_accepted = 0;
        let mut refusal = None;
        for _ in 0..max_accepts {
            let (status, body) = accept(&client, &base, "echo").await;
            match status {
                202 => {
                    round_accepted += 1;
                    accepted.push(body["call_id"].as_str().expect("a call id").to_string());
                }
                _ => {
                    refusal = Some((status, body));
                    break;
                }
            }
        }
        let (status, body) = refusal.unwrap_or_else(|| {
            panic!(
                "{max_accepts} async calls were accepted on a full disk\n{}",
                log(&server)
            )
        });
        if round_accepted > 0 {
            outcomes.add(
                &phase,
                &format!("{round_accepted} async accepts (still fit)"),
                202,
                &Value::Null,
            );
        }
        outcomes.add(&phase, "async accept", status, &body);
        assert_disk_full(status, &body, "an async accept");
        refused_accepts += 1;

        let lost = records_lost(&client, &base).await;
        assert!(lost > 0, "a commit failed but no record is counted lost");
        report.row(&format!("{phase}: call records lost so far"), lost);
        let (status, _) = get(&client, &format!("{}/healthz", base)).await;
        outcomes.add(&phase, "GET /healthz", status, &Value::Null);
        assert_eq!(status, 200);
        assert_nothing_partial(&home);

        // A restart while the disk is full: it either serves (calls answer) or stops
        // at once saying the disk is full; never a half-started server.
        let mut restarted_while_full = true;
        if round == 1 {
            drop(server.take());
            match try_start(&home) {
                Ok(started) => {
                    base = started.base().to_string();
                    server = Some(started);
                    let (status, body) = call(&client, &base, "echo").await;
                    outcomes.add(&phase, "restart, then a sync call", status, &body);
                    assert_eq!(status, 200, "{body}");
                }
                Err(e) => {
                    assert!(
                        e.contains("disk under NEWT_HOME") && e.contains("is full"),
                        "a restart on a full disk fails without saying why: {e}"
                    );
                    let said = e
                        .lines()
                        .find(|l| l.starts_with("error: "))
                        .unwrap_or("?")
                        .to_string();
                    outcomes.add(
                        &phase,
                        "restart",
                        0,
                        &serde_json::json!({"error": {"code": "exit", "message": said}}),
                    );
                    restarted_while_full = false;
                }
            }
        }

        // Space returns: everything works again (without a restart, if it was up).
        let phase = format!("freed #{round}");
        for filler in [FILLER, FILLER_2] {
            std::fs::remove_file(home.join(filler)).expect("removing a filler");
        }
        if !restarted_while_full {
            let started = start(&home);
            base = started.base().to_string();
            server = Some(started);
            outcomes.add(&phase, "start", 0, &Value::Null);
        }
        let (status, body) = deploy(&client, &base, "echo", bundle(round)).await;
        outcomes.add(&phase, "deploy echo (new bundle)", status, &body);
        assert_eq!(status, 201, "{body}\n{}", log(&server));
        version += 1;
        current_echo = bundle(round);
        assert_eq!(body["version"], version, "{body}");
        let (status, body) = call(&client, &base, "echo").await;
        outcomes.add(&phase, "sync call", status, &body);
        assert_eq!(status, 200, "{body}");
        let (status, body) = accept(&client, &base, "echo").await;
        outcomes.add(&phase, "async accept", status, &body);
        assert_eq!(status, 202, "{body}");
        let id = body["call_id"].as_str().expect("a call id").to_string();
        let ended = settle(&client, &base, std::slice::from_ref(&id)).await;
        assert_eq!(ended[&id], "done", "an async call after space returned");
        accepted.push(id);
    }

    // The accepted calls, without a restart: most ended; one whose records could not
    // be written may still read `pending` until the next start runs it.
    let ended = settle(&client, &base, &accepted).await;
    let unfinished = ended.values().filter(|s| !is_final(s)).count();
    report.row("async calls accepted (202)", accepted.len());
    report.row("async accepts refused (507)", refused_accepts);
    report.row("async calls not ended before a restart", unfinished);
    let mut found = 0;
    for id in &sync_ids {
        let (status, _) = get(&client, &format!("{}/v1/calls/{id}", base)).await;
        found += usize::from(status == 200);
    }
    report.row("sync calls answered while full", sync_ok);
    report.row("  of which have a record", found);
    report.row(
        "call records lost since the last start (metric)",
        records_lost(&client, &base).await,
    );

    // A restart on the same home: the artifacts and the database written around the
    // full disk load, and every accepted call ends.
    drop(server.take());
    let restarted = Instant::now();
    server = Some(start(&home));
    base = server.as_ref().expect("restarted").base().to_string();
    let (status, body) = call(&client, &base, "echo").await;
    outcomes.add("restarted", "sync call", status, &body);
    assert_eq!(status, 200, "{body}");
    report.row(
        "restart to first call (ms)",
        restarted.elapsed().as_millis(),
    );
    // The module that could not be cached is compiled again, and cached now.
    let (status, body) = call(&client, &base, "many").await;
    outcomes.add("restarted", "sync call of many", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        artifacts_of(&home, &many_digest).len(),
        1,
        "the restart did not cache the module"
    );
    let ended = settle(&client, &base, &accepted).await;
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for status in ended.values() {
        *by_status.entry(status.as_str()).or_default() += 1;
    }
    let mut counts: Vec<_> = by_status.into_iter().collect();
    counts.sort();
    report.row(
        "accepted calls after the restart",
        counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let open: Vec<_> = ended.iter().filter(|(_, s)| !is_final(s)).collect();
    assert!(
        open.is_empty(),
        "accepted calls never ended: {open:?}\n{}",
        log(&server)
    );
    assert!(
        !log(&server).contains("unusable cached module"),
        "a cached module did not load after the disk was full"
    );
    drop(server.take());

    let integrity = integrity_check(&home.join("newt.db"));
    report.row("PRAGMA integrity_check", &integrity);
    assert_eq!(integrity, "ok");
    assert_nothing_partial(&home);
    let versions = stored_versions(&home.join("newt.db"));
    let expected: Vec<(String, i64)> = (1..=version)
        .map(|v| ("echo".to_string(), v))
        .chain((1..=rounds as i64).map(|v| ("many".to_string(), v)))
        .collect();
    assert_eq!(
        versions, expected,
        "only the deploys that answered 201 are versions"
    );

    report.row("scenario wall time (s)", began.elapsed().as_secs());
    for (phase, action, status, message) in &outcomes.0 {
        report.row(&format!("{phase}: {action}"), format!("{status} {message}"));
    }
    report.print();
    drop(tmpfs);
}

/// What each step answered, in order: (phase, action, status, message).
#[derive(Default)]
struct Outcomes(Vec<(String, String, u16, String)>);

impl Outcomes {
    fn add(&mut self, phase: &str, action: &str, status: u16, body: &Value) {
        let message = body["error"]["message"]
            .as_str()
            .map(|m| format!("{}: {m}", body["error"]["code"].as_str().unwrap_or("")))
            .unwrap_or_default();
        self.0.push((
            phase.into(),
            action.into(),
            status,
            message.replace('|', "/"),
        ));
    }
}

/// A 507 that says the disk is full and what to do.
fn assert_disk_full(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 507, "{what} on a full disk: {body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("disk under NEWT_HOME is full") && message.contains("Free space"),
        "{what}: the message does not say what happened and what to do: {message}"
    );
}

/// A tmpfs mounted on a fresh directory, unmounted (and the directory removed) when
/// dropped, however the scenario ends.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("newt-disk-full-")
            .tempdir()
            .map_err(|e| format!("creating a mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("newt-disk-full")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let unmounted = Command::new("umount")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success())
            // Busy (a process still holds a file there): detach it now, it goes when
            // the last user does.
            || Command::new("umount")
                .arg("-l")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
        if !unmounted {
            eprintln!("could not unmount the tmpfs on {}", dir.path().display());
            // Removing the directory would empty the still-mounted tmpfs instead.
            let _ = dir.keep();
        }
    }
}

/// The effective uid of this process.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The fillers' names in NEWT_HOME.
const FILLER: &str = "filler";
const FILLER_2: &str = "filler-2";

/// Room made for a bundle of `many_functions` (~25 KiB) and its version row, but
/// not for its compiled module (~1 MiB).
const HOLE: u64 = 512 * 1024;

/// Fills the filesystem of `home` to the last page with a filler file `name`;
/// returns its size. Each write is tried again smaller until not even one page fits.
fn fill(home: &Path, name: &str) -> u64 {
    let mut file = std::fs::File::create(home.join(name)).expect("creating the filler");
    let mut size = 0;
    let mut chunk = 1 << 20;
    let zeros = vec![0u8; chunk];
    while chunk >= 512 {
        match file.write(&zeros[..chunk]) {
            Ok(0) => chunk /= 2,
            Ok(n) => size += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => chunk /= 2,
            Err(e) => panic!("filling {}: {e}", home.display()),
        }
    }
    size
}

/// Reserves 8 MiB for the server's log beyond its end (`fallocate --keep-size`).
fn reserve_log(home: &Path) {
    let log = home.join("server.log");
    if let Err(e) = std::fs::File::create(&log) {
        eprintln!("note: could not create {}: {e}", log.display());
    }
    let reserved = Command::new("fallocate")
        .args(["--keep-size", "--length", "8MiB"])
        .arg(&log)
        .status()
        .is_ok_and(|s| s.success());
    if !reserved {
        eprintln!("note: could not reserve room for the server log; it may miss lines");
    }
}

/// A `newt serve` on `home` without a Docker engine.
fn start(home: &Path) -> TestServer {
    try_start(home).unwrap_or_else(|e| panic!("{e}"))
}

/// [`start`], or why the server did not start (with its log).
fn try_start(home: &Path) -> Result<TestServer, String> {
    TestServer::builder(newt_bin())
        .home(home)
        .env("RUST_LOG", "info")
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", home.display()),
        )
        .start_timeout(Duration::from_secs(60))
        .stop_timeout(Duration::from_secs(10))
        .start()
        .map_err(|e| format!("{e:#}"))
}

fn log(server: &Option<TestServer>) -> String {
    server.as_ref().map(TestServer::log).unwrap_or_default()
}

/// The echo fixture with a custom section of `seed`-derived bytes: a new bundle (new
/// digest) that runs the same, 64 KiB so it needs pages of its own.
fn bundle(seed: u8) -> Vec<u8> {
    let name = b"newt-disk-full";
    let payload: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut content = leb128(name.len());
    content.extend_from_slice(name);
    content.extend_from_slice(&payload);
    let mut module = fixture!("echo").to_vec();
    module.push(0); // custom section
    module.extend(leb128(content.len()));
    module.extend(content);
    module
}

/// A module of `n` empty functions and an empty `_start`: small as a bundle (3 bytes
/// a function), large once compiled (each function gets code and metadata).
fn many_functions(n: u32) -> Vec<u8> {
    fn section(id: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![id];
        out.extend(leb128(content.len()));
        out.extend_from_slice(content);
        out
    }
    let n = n as usize;
    let types = [&leb128(1)[..], &[0x60, 0, 0]].concat();
    let functions = [leb128(n), vec![0; n]].concat();
    let exports = [&leb128(1)[..], &leb128(6), b"_start", &[0], &leb128(0)].concat();
    let mut code = leb128(n);
    for _ in 0..n {
        code.extend([3, 0, 0x01, 0x0b]); // size, no locals, nop, end
    }
    [
        &b"\0asm\x01\0\0\0"[..],
        &section(1, &types),
        &section(3, &functions),
        &section(7, &exports),
        &section(10, &code),
    ]
    .concat()
}

/// The compiled modules cached for bundle `digest`.
fn artifacts_of(home: &Path, digest: &str) -> Vec<PathBuf> {
    std::fs::read_dir(home.join("cache"))
        .expect("the module cache")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(digest))
        })
        .collect()
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The status and JSON body (or `Null`) of a request; status 0 and the error when no
/// answer came (the assertion on the status then shows it).
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return (0, Value::String(format!("no answer: {e:#}"))),
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    answer(client.get(url)).await
}

async fn deploy(client: &reqwest::Client, base: &str, name: &str, body: Vec<u8>) -> (u16, Value) {
    deploy_query(client, base, name, "", body).await
}

async fn deploy_query(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    query: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    answer(
        client
            .put(format!("{base}/v1/functions/{name}{query}"))
            .body(body),
    )
    .await
}

/// A sync call of `name`: the status and `{"call_id", "output"}` (or the error body).
async fn call(client: &reqwest::Client, base: &str, name: &str) -> (u16, Value) {
    let response = match client
        .post(format!("{base}/v1/functions/{name}/invoke"))
        .body(INPUT)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return (0, Value::String(format!("no answer: {e:#}"))),
    };
    let status = response.status().as_u16();
    let call_id = call_id(&response);
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status == 200 {
        return (
            status,
            serde_json::json!({ "call_id": call_id, "output": body }),
        );
    }
    (status, body)
}

async fn accept(client: &reqwest::Client, base: &str, name: &str) -> (u16, Value) {
    answer(
        client
            .post(format!("{base}/v1/functions/{name}/invoke?async=true"))
            .body(INPUT),
    )
    .await
}

/// `newt_call_records_lost_total` from `/metrics`.
async fn records_lost(client: &reqwest::Client, base: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("newt_call_records_lost_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("/metrics has newt_call_records_lost_total")
}

fn is_final(status: &str) -> bool {
    matches!(status, "done" | "failed" | "timeout" | "cancelled")
}

/// Polls each call until it has ended or [`SETTLE`] has passed; returns each call's
/// last status (`missing` for a 404).
async fn settle(client: &reqwest::Client, base: &str, ids: &[String]) -> HashMap<String, String> {
    let deadline = Instant::now() + SETTLE;
    let mut last = HashMap::new();
    for id in ids {
        loop {
            let (status, body) = get(client, &format!("{base}/v1/calls/{id}")).await;
            let now = match status {
                200 => body["status"].as_str().unwrap_or("?").to_string(),
                404 => "missing".to_string(),
                other => format!("http {other}"),
            };
            let done = is_final(&now) || Instant::now() >= deadline;
            last.insert(id.clone(), now);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    last
}

/// No temporary file is left in the content store or the module cache, and every
/// stored bundle hashes to its name: nothing half-written is visible.
fn assert_nothing_partial(home: &Path) {
    for tmp in ["cas/tmp", "cache/tmp"] {
        let left: Vec<PathBuf> = std::fs::read_dir(home.join(tmp))
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "temporary files left in {tmp}: {left:?}");
    }
    let mut blobs = 0;
    for shard in std::fs::read_dir(home.join("cas/sha256"))
        .expect("cas/sha256")
        .flatten()
    {
        for blob in std::fs::read_dir(shard.path())
            .expect("a cas shard")
            .flatten()
        {
            let bytes = std::fs::read(blob.path()).expect("reading a blob");
            let name = blob.file_name().to_string_lossy().into_owned();
            assert_eq!(
                newt_runtime::Digest::of(&bytes).as_str(),
                name,
                "a stored bundle does not hash to its name"
            );
            blobs += 1;
        }
    }
    assert!(blobs > 0, "no bundle stored at all");
}

/// `PRAGMA integrity_check` of the database at `path` (the server stopped).
fn integrity_check(path: &Path) -> String {
    let db = rusqlite::Connection::open(path).expect("opening the database");
    db.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("PRAGMA integrity_check")
}

/// Every stored function version, as (name, version), in order.
fn stored_versions(path: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(path).expect("opening the database");
    let mut query = db
        .prepare("SELECT name, version FROM function_versions ORDER BY name, version")
        .expect("querying versions");
    query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("reading versions")
        .collect::<Result<_, _>>()
        .expect("reading versions")
}
