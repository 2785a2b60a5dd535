//! The container round trip without HTTP: a warm call of a Python echo through the
//! agent's frame protocol on attached stdio, on the real Docker engine. Skips (with a
//! line saying so) when no engine answers.

use bytes::Bytes;
use criterion::Criterion;
use newt_runtime::{
    CallRequest, CallResult, Cas, DockerConfig, DockerExecutor, Executor, FunctionSpec, Invoker,
    Limits,
};
use std::sync::Arc;
use std::time::Duration;

fn echo_bundle() -> Vec<u8> {
    newt_runtime::pack(&[("main.py", b"def handler(event):\n    return event\n")])
        .expect("packing the echo bundle")
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let home = tempfile::tempdir().expect("temp home");
    let docker = Arc::new(DockerExecutor::new(DockerConfig {
        address: std::env::var("DOCKER_HOST").ok(),
        work_dir: home.path().join("docker"),
        host_id: format!("bench-{}", std::process::id()),
    }));
    let health = rt.block_on(docker.health());
    if !health.reachable {
        eprintln!(
            "container bench skipped: no Docker engine at {}",
            health.address
        );
        return;
    }
    let cas = Cas::open(home.path().join("cas")).expect("content store");
    let digest = cas.put(&echo_bundle()).expect("bundle");
    let invoker = Invoker::new(cas).with_shared_executor(docker.clone());
    let spec = std::sync::Arc::new(FunctionSpec {
        name: "bench-echo".into(),
        version: 1,
        runtime: "python".into(),
        digest: digest.to_string(),
        limits: Limits::default(),
        policy: newt_runtime::Policy::default(),
        env: Default::default(),
        allow_outbound: Default::default(),
    });
    let call = || async {
        let outcome = invoker
            .invoke(
                &spec,
                CallRequest {
                    call_id: "bench".into(),
                    input: Bytes::from_static(b"{\"n\":1}"),
                    http: None,
                },
                std::time::Instant::now() + spec.limits.timeout(),
            )
            .await
            .expect("call");
        assert_eq!(outcome.result, CallResult::Done);
    };
    // The first call builds the image if needed and starts the container.
    rt.block_on(call());

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    criterion.bench_function("container/warm_round_trip", |b| {
        b.iter(|| rt.block_on(call()))
    });
    criterion.final_summary();
    rt.block_on(async {
        invoker.drain_all().await;
        let _ = docker.remove_leftovers().await;
    });
}
