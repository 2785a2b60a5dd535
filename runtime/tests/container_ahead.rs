//! Containers started ahead for `preload = none` functions, on the real Docker engine
//! through the executor: a call takes one (its function's own image, hardened, the
//! agent waiting for `init`), no container serves two calls, the pool stays within
//! its bounds, the function's configuration and egress arrive with the call, and
//! removing the host's leftovers removes what was started ahead. Skips (with a line
//! saying so) when no engine answers.

mod support;

use newt_runtime::{
    AheadLimits, AllowList, DockerConfig, DockerExecutor, Executor, FunctionSpec, Limits, Policy,
    Preload,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WHO: &str = r#"
import os, socket

LOADED = os.urandom(8).hex()

def handler(event):
    return {"host": socket.gethostname(), "loaded": LOADED,
            "secret": os.environ.get("SECRET"), "runtime_level": os.environ.get("NEWT_RUNTIME_LEVEL"),
            "socket": os.path.exists("/run/newt/egress.sock"), "proxy": os.environ.get("HTTP_PROXY")}
"#;

fn spec(digest: &str, name: &str, allow: &[String]) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        version: 1,
        runtime: "python".into(),
        digest: digest.into(),
        limits: Limits::default(),
        policy: Policy {
            preload: Preload::None,
            ..Policy::default()
        },
        env: newt_runtime::Env(Arc::new(BTreeMap::from([(
            "SECRET".to_string(),
            "s3cret".to_string(),
        )]))),
        allow_outbound: Arc::new(AllowList::parse(allow).unwrap()),
    }
}

async fn call(
    docker: &DockerExecutor,
    spec: &FunctionSpec,
    instance: &mut <DockerExecutor as Executor>::Instance,
) -> Value {
    support::call_json(docker, spec, instance, "ahead", &serde_json::json!({})).await
}

/// A label of a container, by the engine's CLI.
fn label(container: &str, name: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{name}\"}}}}"),
            container,
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn containers_of(host_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=newt.host={host_id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(180);
    while !check() {
        assert!(Instant::now() < give_up, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn preload_none_calls_take_containers_started_ahead_each_once() {
    let home = tempfile::tempdir().unwrap();
    let host_id = format!("ahead-test-{}", std::process::id());
    let limits = AheadLimits {
        per_kind: 3,
        total: 4,
        starting: 2,
    };
    let docker = DockerExecutor::new(DockerConfig {
        address: std::env::var("DOCKER_HOST").ok(),
        work_dir: home.path().join("docker"),
        host_id: host_id.clone(),
    })
    .with_ahead_limits(limits);
    let health = docker.health().await;
    if !health.reachable {
        eprintln!("ahead test skipped: no Docker engine at {}", health.address);
        return;
    }
    let docker = Arc::new(docker);
    let (bundle_path, digest) = support::stored_python(home.path(), WHO);
    let strict = spec(&digest, "ahead-strict", &[]);
    let prepared = Arc::new(
        docker
            .prepare(&strict, &bundle_path)
            .await
            .expect("prepare"),
    );
    let deadline = || Instant::now() + Duration::from_secs(120);

    // The first call finds nothing ready and starts its own container; one more than
    // in use is then started ahead.
    let mut first = docker.create(&strict, &prepared, deadline()).await.unwrap();
    let out = call(&docker, &strict, &mut first).await;
    assert_eq!(label(out["host"].as_str().unwrap(), "newt.ahead"), "false");
    assert_eq!(out["secret"], "s3cret", "{out}");
    docker.destroy(first).await;
    eventually("a container started ahead", || {
        docker.ahead_stats().ready >= 1
    })
    .await;

    // The next call takes it: the function's own image, its agent booted without
    // the function, which arrives (with its configuration) in the call's `init`.
    let mut taken = docker.create(&strict, &prepared, deadline()).await.unwrap();
    let out = call(&docker, &strict, &mut taken).await;
    let host = out["host"].as_str().unwrap().to_string();
    assert_eq!(label(&host, "newt.ahead"), "true", "{out}");
    assert_eq!(label(&host, "newt.generic"), "false", "{out}");
    assert_eq!(out["secret"], "s3cret", "{out}");
    assert_eq!(out["runtime_level"], Value::Null, "{out}");
    assert_eq!(out["socket"], false, "{out}");
    docker.destroy(taken).await;

    // Calls in parallel, rounds of them: every call's container is its own, and the
    // pool never holds more than its bounds.
    let mut hosts = HashSet::from([host]);
    let mut loaded = HashSet::new();
    for _ in 0..4 {
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (docker, strict, prepared) = (docker.clone(), strict.clone(), prepared.clone());
                tokio::spawn(async move {
                    let mut instance = docker.create(&strict, &prepared, deadline()).await.unwrap();
                    let out = call(&docker, &strict, &mut instance).await;
                    docker.destroy(instance).await;
                    out
                })
            })
            .collect();
        for handle in calls {
            let out = handle.await.unwrap();
            let stats = docker.ahead_stats();
            assert!(stats.ready + stats.starting <= limits.total, "{stats:?}");
            assert!(
                hosts.insert(out["host"].as_str().unwrap().to_string()),
                "{out} twice"
            );
            assert!(
                loaded.insert(out["loaded"].as_str().unwrap().to_string()),
                "{out}"
            );
        }
    }

    // A function with an allow-list: the container started ahead has an egress
    // directory, and the proxy starts when the call takes it. (The first kind's are
    // removed first, so what is ready next is the second kind's.)
    docker.remove_leftovers().await.unwrap();
    assert_eq!(docker.ahead_stats().ready, 0);
    let open = spec(&digest, "ahead-open", &["127.0.0.1:9".to_string()]);
    let first = docker.create(&open, &prepared, deadline()).await.unwrap();
    docker.destroy(first).await;
    eventually("a container with egress started ahead", || {
        docker.ahead_stats().ready >= 1
    })
    .await;
    let mut with_egress = docker.create(&open, &prepared, deadline()).await.unwrap();
    let out = call(&docker, &open, &mut with_egress).await;
    assert_eq!(label(out["host"].as_str().unwrap(), "newt.ahead"), "true");
    assert_eq!(out["socket"], true, "{out}");
    assert!(out["proxy"].as_str().is_some(), "{out}");
    docker.destroy(with_egress).await;

    // Removing the host's leftovers (start, shutdown) removes what was started ahead,
    // and starts under way are not kept.
    let stats = docker.ahead_stats();
    assert!(stats.ready + stats.starting > 0, "{stats:?}");
    docker.remove_leftovers().await.unwrap();
    assert_eq!(docker.ahead_stats().ready, 0);
    assert_eq!(docker.ahead_stats().starting, 0);
    assert!(containers_of(&host_id).is_empty(), "containers left");
}
