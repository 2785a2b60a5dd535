//! What the container tests share: a bundle put in a content store, and a call
//! whose output is JSON.

use bytes::Bytes;
use newt_runtime::{CallRequest, CallResult, Cas, DockerExecutor, Executor, FunctionSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Packs `main.py` into a bundle stored under `dir/cas`: its path and digest.
pub fn stored_python(dir: &Path, main_py: &str) -> (PathBuf, String) {
    let cas = Cas::open(dir.join("cas")).unwrap();
    let bundle = newt_runtime::pack(&[("main.py", main_py.as_bytes())]).unwrap();
    let digest = cas.put(&bundle).unwrap();
    (cas.path(&digest), digest.to_string())
}

/// Calls `instance` with `input` and returns its output as JSON; the call must be
/// `Done` (its logs say why not).
pub async fn call_json(
    docker: &DockerExecutor,
    spec: &FunctionSpec,
    instance: &mut <DockerExecutor as Executor>::Instance,
    call_id: &str,
    input: &Value,
) -> Value {
    let outcome = docker
        .invoke(
            spec,
            instance,
            &CallRequest {
                call_id: call_id.into(),
                input: Bytes::from(input.to_string()),
                http: None,
            },
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .expect("the call");
    assert_eq!(
        outcome.result,
        CallResult::Done,
        "{}",
        String::from_utf8_lossy(&outcome.logs)
    );
    serde_json::from_slice(&outcome.output).unwrap()
}
