//! Retention end to end: old call records deleted in the background (pending and
//! running calls kept), `newt gc --dry-run` listing what no live version references
//! with its bytes, `newt gc` removing it, and nothing referenced ever removed: a
//! live function, the newest `--keep-versions`, an old version with a call in
//! flight, a pending build, the image a Python function runs in.

use newt_runtime::Digest;
use newt_tests::{Server, docker_available, fixture, tar_gz};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::cli::{newt, stdout_of};
use crate::support::{deploy, eventually, get_json, http, invoke, metrics_text};

/// Makes every file under `dir` look written `age` ago, past retention's grace
/// period (which spares files a deploy may be writing right now).
fn backdate(dir: &Path, age: Duration) {
    let then = SystemTime::now() - age;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            backdate(&path, age);
        } else if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            file.set_modified(then).unwrap();
        }
    }
}

/// Backdates the content store and the compiled-module cache of `server`.
fn backdate_state(server: &Server) {
    backdate(&server.home.join("cas"), Duration::from_secs(600));
    backdate(&server.home.join("cache"), Duration::from_secs(600));
}

/// `POST /v1/gc`, with or without `dry_run`.
async fn gc(server: &Server, dry_run: bool) -> Value {
    let response = http()
        .post(server.url(&format!("/v1/gc?dry_run={dry_run}")))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "gc: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

/// The names of a report's items of one kind.
fn names(report: &Value, kind: &str) -> Vec<String> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["kind"] == kind)
        .map(|item| item["name"].as_str().unwrap().to_string())
        .collect()
}

/// The report's item of this kind and name.
fn item<'a>(report: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["kind"] == kind && item["name"] == name)
}

fn bundle_path(server: &Server, digest: &Digest) -> std::path::PathBuf {
    let hex = digest.as_str();
    server.home.join("cas/sha256").join(&hex[..2]).join(hex)
}

/// Compiled artifacts in the cache for this bundle digest.
fn artifacts_of(server: &Server, digest: &Digest) -> Vec<String> {
    std::fs::read_dir(server.home.join("cache"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.starts_with(digest.as_str()) && name.ends_with(".cwasm"))
        .collect()
}

/// The function's call records (at most 100).
async fn calls_of(server: &Server, function: &str) -> Vec<Value> {
    let (status, body) =
        get_json(server, &format!("/v1/calls?function={function}&limit=100")).await;
    assert_eq!(status, 200, "{body}");
    body["calls"]
        .as_array()
        .or(body.as_array())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn records_past_their_age_go_in_the_background_and_unfinished_calls_stay() {
    let server = Server::start_with_args(&[
        "--retain-calls",
        "1s",
        "--gc-interval",
        "1s",
        "--async-concurrency",
        "1",
        "--shutdown-grace",
        "1",
    ]);
    deploy(&server, "echo", fixture!("echo"), "").await;
    deploy(&server, "nap", fixture!("nap8"), "").await;
    for _ in 0..5 {
        assert_eq!(invoke(&server, "echo", "hi").await.status(), 200);
    }
    // One async call runs for 8 s; the second waits its turn, pending.
    for _ in 0..2 {
        let response = http()
            .post(server.url("/v1/functions/nap/invoke?async=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    assert_eq!(calls_of(&server, "echo").await.len(), 5);
    eventually(6, "the finished records deleted", async || {
        calls_of(&server, "echo").await.is_empty()
    })
    .await;
    // Older than 1 s too, but running and pending: kept.
    let naps = calls_of(&server, "nap").await;
    let mut statuses: Vec<&str> = naps.iter().map(|c| c["status"].as_str().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, ["pending", "running"], "{naps:?}");
}

#[tokio::test]
async fn records_beyond_the_count_per_function_go_with_newt_gc() {
    let server = Server::start_with_args(&["--retain-calls-per-function", "3"]);
    deploy(&server, "echo", fixture!("echo"), "").await;
    let mut nums = Vec::new();
    for i in 0..6 {
        let response = invoke(&server, "echo", &format!("call {i}")).await;
        assert_eq!(response.status(), 200);
    }
    for call in calls_of(&server, "echo").await {
        nums.push(call["num"].as_i64().unwrap());
    }
    nums.sort();
    assert_eq!(nums.len(), 6);

    let out = stdout_of(&newt(&server, &["gc", "--dry-run"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("records") && l.split_whitespace().nth(1) == Some("3")),
        "{out}"
    );
    assert_eq!(
        calls_of(&server, "echo").await.len(),
        6,
        "a dry run removes nothing"
    );
    let out = stdout_of(&newt(&server, &["gc"]));
    assert!(out.contains("freed"), "{out}");
    let mut left: Vec<i64> = calls_of(&server, "echo")
        .await
        .iter()
        .map(|c| c["num"].as_i64().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, nums[3..], "the newest three stay");
}

#[tokio::test]
async fn a_deleted_functions_bundle_and_artifact_are_listed_then_removed_and_a_live_ones_stay() {
    let server = Server::start();
    deploy(&server, "keep", fixture!("echo"), "").await;
    deploy(&server, "gone", fixture!("nap"), "").await;
    let (keep, gone) = (Digest::of(fixture!("echo")), Digest::of(fixture!("nap")));
    assert_eq!(artifacts_of(&server, &gone).len(), 1);
    let deleted = http()
        .delete(server.url("/v1/functions/gone"))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    // Nothing goes while it is younger than the grace period: a deploy may be
    // between storing a bundle and storing its version.
    let report = gc(&server, true).await;
    assert!(names(&report, "bundle").is_empty(), "{report}");
    backdate_state(&server);
    // A bundle written just now (a deploy in progress), unreferenced: spared.
    deploy(&server, "young", fixture!("fail"), "").await;
    let young = Digest::of(fixture!("fail"));
    http()
        .delete(server.url("/v1/functions/young"))
        .send()
        .await
        .unwrap();

    let report = gc(&server, true).await;
    assert_eq!(report["dry_run"], true);
    assert_eq!(names(&report, "bundle"), [gone.to_string()], "{report}");
    let bundle = item(&report, "bundle", gone.as_str()).unwrap();
    assert_eq!(bundle["bytes"], fixture!("nap").len() as u64);
    assert_eq!(bundle["why"], "function deleted");
    let artifact = artifacts_of(&server, &gone).remove(0);
    let listed = item(&report, "artifact", &artifact).expect("the artifact is listed");
    assert!(listed["bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["kinds"]["bundles"]["count"], 1);
    assert!(report["total"]["bytes"].as_u64().unwrap() > fixture!("nap").len() as u64);
    assert!(
        bundle_path(&server, &gone).is_file(),
        "a dry run removes nothing"
    );

    // The CLI prints the same as a table with totals.
    let out = stdout_of(&newt(&server, &["gc", "--dry-run"]));
    assert!(
        out.contains(&format!("sha256:{}", &gone.as_str()[..16])),
        "{out}"
    );
    assert!(out.contains("function deleted"), "{out}");
    assert!(
        out.contains("would free") && out.contains("dry run"),
        "{out}"
    );
    println!("newt gc --dry-run:\n{out}");

    let (_, before) = get_json(&server, "/v1/status").await;
    assert_eq!(before["disk"]["cas"]["count"], 3, "{before}");
    let report = gc(&server, false).await;
    assert_eq!(names(&report, "bundle"), [gone.to_string()], "{report}");
    assert!(!bundle_path(&server, &gone).exists());
    assert!(artifacts_of(&server, &gone).is_empty());
    // The live function's bundle and artifact stay, and it runs.
    assert!(bundle_path(&server, &keep).is_file());
    assert_eq!(artifacts_of(&server, &keep).len(), 1);
    assert!(bundle_path(&server, &young).is_file());
    assert_eq!(invoke(&server, "keep", "still here").await.status(), 200);
    let (_, after) = get_json(&server, "/v1/status").await;
    assert_eq!(after["disk"]["cas"]["count"], 2, "{after}");
    assert!(after["disk"]["db"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(after["functions"], 1);
    let out = stdout_of(&newt(&server, &["status"]));
    assert!(out.contains("cas") && out.contains("1 functions"), "{out}");

    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("newt_gc_removed_total{kind=\"bundles\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("newt_gc_removed_total{kind=\"artifacts\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn replaced_versions_beyond_keep_versions_go_and_those_within_stay() {
    let server = Server::start_with_args(&["--keep-versions", "2"]);
    let bundles: [&[u8]; 4] = [
        fixture!("echo"),
        fixture!("env"),
        fixture!("fail"),
        fixture!("trap"),
    ];
    for bundle in bundles {
        deploy(&server, "f", bundle, "").await;
    }
    backdate_state(&server);
    let report = gc(&server, true).await;
    let mut expected: Vec<String> = bundles[..2]
        .iter()
        .map(|b| Digest::of(b).to_string())
        .collect();
    expected.sort();
    assert_eq!(names(&report, "bundle"), expected, "{report}");
    for digest in &expected {
        assert_eq!(
            item(&report, "bundle", digest).unwrap()["why"],
            "replaced version"
        );
    }
    gc(&server, false).await;
    for (i, bundle) in bundles.iter().enumerate() {
        let kept = bundle_path(&server, &Digest::of(bundle)).is_file();
        assert_eq!(kept, i >= 2, "version {}", i + 1);
    }
}

#[tokio::test]
async fn an_old_versions_call_in_flight_keeps_its_bundle_and_finishes() {
    let server = Server::start_with_args(&["--keep-versions", "1"]);
    deploy(&server, "slow", fixture!("nap3"), "").await;
    let nap = Digest::of(fixture!("nap3"));
    let call = {
        let url = server.url("/v1/functions/slow/invoke");
        tokio::spawn(async move { http().post(url).send().await.unwrap().status().as_u16() })
    };
    eventually(5, "the slow call running", async || {
        let (_, pools) = get_json(&server, "/v1/pools").await;
        pools.to_string().contains("\"busy\":1")
    })
    .await;
    // v2 replaces v1, which is now beyond --keep-versions 1, but its call still runs.
    deploy(&server, "slow", fixture!("echo"), "").await;
    backdate_state(&server);
    let report = gc(&server, false).await;
    assert!(item(&report, "bundle", nap.as_str()).is_none(), "{report}");
    assert!(bundle_path(&server, &nap).is_file());
    assert_eq!(call.await.unwrap(), 200);
}

#[tokio::test]
async fn a_pending_builds_bundle_stays_and_a_replaced_python_image_goes() {
    if !docker_available() {
        return;
    }
    let server = Server::start_with_args(&["--keep-versions", "1"]);
    // A name of this test's own: images are per function name, shared by hosts.
    let name = format!("gc-py-{}", std::process::id());
    let v1 = tar_gz(&[("main.py", b"def handler(event):\n    return 1\n")]);
    let v2 = tar_gz(&[("main.py", b"def handler(event):\n    return 2\n")]);
    crate::containers::deploy_python(&server, &name, v1.clone(), "").await;
    // v2 builds in the background: pending, so its bundle is live.
    let response = http()
        .put(server.url(&format!("/v1/functions/{name}?runtime=python")))
        .body(v2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    backdate_state(&server);
    let report = gc(&server, true).await;
    let (d1, d2) = (Digest::of(&v1), Digest::of(&v2));
    assert!(item(&report, "bundle", d2.as_str()).is_none(), "{report}");
    // v1 still serves while v2 builds.
    assert!(item(&report, "bundle", d1.as_str()).is_none(), "{report}");
    assert!(names(&report, "image").is_empty(), "{report}");

    eventually(120, "v2 ready", async || {
        let (_, function) = get_json(&server, &format!("/v1/functions/{name}")).await;
        function["status"] == "ready" && function["version"] == 2
    })
    .await;
    let tags = || {
        let out = std::process::Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .arg(format!("newt-fn/{name}"))
            .output()
            .unwrap();
        let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        tags.sort();
        tags
    };
    assert_eq!(tags().len(), 2, "{:?}", tags());
    backdate_state(&server);
    let report = gc(&server, true).await;
    let images = names(&report, "image");
    assert_eq!(images.len(), 1, "{report}");
    assert_eq!(
        item(&report, "image", &images[0]).unwrap()["why"],
        "replaced version"
    );
    assert!(item(&report, "bundle", d1.as_str()).is_some(), "{report}");
    // v1's last container may still be on its way out: the engine refuses to remove
    // an image in use, and the next run takes it.
    eventually(20, "v1's image removed", async || {
        gc(&server, false).await;
        !tags().contains(&images[0])
    })
    .await;
    assert_eq!(tags().len(), 1);
    let response = invoke(&server, &name, "{}").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap().trim(), "2");
}
