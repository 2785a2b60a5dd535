//! The same work done the way a user would without newt, each a row beside newt's:
//!
//! - `in-process`: instantiate+run of the wasm workload (the SDK hello) on newt's own engine (`Invoker` and
//!   `WasmExecutor` on a temporary home), no HTTP: the floor for wasm.
//! - `wasmtime run`: the wasmtime CLI, a process per call.
//! - `docker run`: `docker run --rm -i --network none newt/python:3 python3 -c …`, a
//!   container per call.
//! - `docker exec`: `docker exec -i` into one running container of the same image per
//!   call; the bench starts that container and removes it when done (a Drop guard).
//!
//! A peer that is not installed is a skipped row saying how to install it. Each row
//! names what both sides ran (its `work`): the same workload as newt's rows.

use super::fixtures::{self, Workload};
use super::report::{Row, peer};
use anyhow::{Context, bail};
use bytes::Bytes;
use newt_runtime::{
    CallRequest, CallResult, Cas, FunctionSpec, Invoker, Limits, WasmConfig, WasmExecutor,
};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How to get `wasmtime` (the version newt's engine is built on).
pub const WASMTIME_HINT: &str = "install with cargo install wasmtime-cli --version 48.0.8 --locked";
/// The image both container peers run: the python runtime's base image.
pub const PYTHON_IMAGE: &str = "newt/python:3";

/// What a peer row says both sides ran.
pub fn both(label: &str) -> String {
    format!("both: {label}")
}

/// The in-process floor: `samples` sequential calls after one warm-up call.
pub async fn in_process(workload: &Workload, samples: usize) -> anyhow::Result<Row> {
    let home = tempfile::tempdir().context("creating a temporary home")?;
    let cas = Cas::open(home.path().join("cas")).context("opening the content store")?;
    let digest = cas
        .put(&workload.bundle)
        .context("storing the wasm module")?;
    let wasm = WasmExecutor::new(WasmConfig {
        cache_dir: home.path().join("cache"),
        pooling: true,
    })
    .context("starting the wasm engine")?;
    let invoker = Invoker::new(cas).with_executor(wasm);
    let spec = std::sync::Arc::new(FunctionSpec {
        name: "bench-floor".into(),
        version: 1,
        runtime: "wasm".into(),
        digest: digest.to_string(),
        limits: Limits::default(),
        policy: newt_runtime::Policy::default(),
        env: Default::default(),
        allow_outbound: Default::default(),
    });
    let call = async || -> anyhow::Result<()> {
        let request = CallRequest {
            call_id: "bench".into(),
            input: Bytes::from_static(workload.input.as_bytes()),
            http: None,
        };
        let outcome = invoker
            .invoke(&spec, request, Instant::now() + spec.limits.timeout())
            .await
            .context("in-process call")?;
        if outcome.result != CallResult::Done {
            bail!("in-process call did not succeed: {:?}", outcome.result);
        }
        Ok(())
    };
    // The first call compiles the module: not what the floor measures.
    call().await?;
    let mut samples_ms = Vec::with_capacity(samples);
    let start = Instant::now();
    for _ in 0..samples {
        let t = Instant::now();
        call().await?;
        samples_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(
        Row::measured("wasm", peer::IN_PROCESS, 1, samples_ms, start.elapsed())
            .with_work(both(&workload.label)),
    )
}

/// `wasmtime run` of the wasm workload per call, or a skipped row when it is not on
/// the PATH.
pub async fn wasmtime_run(workload: &Workload, samples: usize) -> Row {
    let Some(wasmtime) = find_on_path("wasmtime") else {
        return Row::skipped("wasm", peer::WASMTIME_RUN, 1, WASMTIME_HINT);
    };
    let result = async {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let module = dir.path().join("function.wasm");
        std::fs::write(&module, &workload.bundle).context("writing function.wasm")?;
        let mut command = tokio::process::Command::new(&wasmtime);
        command.arg("run").arg(&module);
        sequential(
            peer::WASMTIME_RUN,
            "wasm",
            samples,
            workload.input,
            &mut command,
        )
        .await
    }
    .await;
    result
        .unwrap_or_else(|e| Row::skipped("wasm", peer::WASMTIME_RUN, 1, &format!("failed: {e:#}")))
        .with_work(both(&workload.label))
}

/// Whether the local Docker CLI answers and has the python base image; `Err` is the
/// reason (and the hint) for skipped rows.
pub async fn docker_ready() -> Result<(), String> {
    if find_on_path("docker").is_none() {
        return Err("install Docker (apt-get install docker.io) and start its engine".into());
    }
    let version = tokio::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .await;
    if !version.is_ok_and(|o| o.status.success()) {
        return Err("no Docker engine answers (start it: systemctl start docker)".into());
    }
    let image = tokio::process::Command::new("docker")
        .args(["image", "inspect", PYTHON_IMAGE])
        .output()
        .await;
    if !image.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "image {PYTHON_IMAGE} is missing: run `newt serve` once with Docker to build it"
        ));
    }
    Ok(())
}

/// `docker run --rm` per call.
pub async fn docker_run(samples: usize) -> Row {
    let mut command = tokio::process::Command::new("docker");
    command
        .args(["run", "--rm", "-i", "--network", "none", PYTHON_IMAGE])
        .args(["python3", "-c", fixtures::ECHO_PY_COMMAND]);
    sequential(
        peer::DOCKER_RUN,
        "python",
        samples,
        fixtures::INPUT,
        &mut command,
    )
    .await
    .unwrap_or_else(|e| Row::skipped("python", peer::DOCKER_RUN, 1, &format!("failed: {e:#}")))
    .with_work(both(fixtures::PYTHON_LABEL))
}

/// `docker exec` into one running container per call.
pub async fn docker_exec(samples: usize) -> Row {
    let result = async {
        let container = BenchContainer::start().await?;
        let mut command = tokio::process::Command::new("docker");
        command.args(["exec", "-i", &container.id]).args([
            "python3",
            "-c",
            fixtures::ECHO_PY_COMMAND,
        ]);
        sequential(
            peer::DOCKER_EXEC,
            "python",
            samples,
            fixtures::INPUT,
            &mut command,
        )
        .await
    }
    .await;
    result
        .unwrap_or_else(|e| Row::skipped("python", peer::DOCKER_EXEC, 1, &format!("failed: {e:#}")))
        .with_work(both(fixtures::PYTHON_LABEL))
}

/// A container the bench started, removed when dropped (on errors too).
struct BenchContainer {
    id: String,
}

impl BenchContainer {
    async fn start() -> anyhow::Result<BenchContainer> {
        let output = tokio::process::Command::new("docker")
            .args(["run", "-d", "--rm", "--network", "none"])
            .args([
                "--label",
                "newt.bench=true",
                PYTHON_IMAGE,
                "sleep",
                "infinity",
            ])
            .output()
            .await
            .context("starting the docker exec peer's container")?;
        if !output.status.success() {
            bail!(
                "docker run -d {PYTHON_IMAGE}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(BenchContainer {
            id: String::from_utf8_lossy(&output.stdout).trim().to_string(),
        })
    }
}

impl Drop for BenchContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `command` `samples` times one after another, `input` on its stdin; every run
/// must succeed.
async fn sequential(
    kind: &str,
    backend: &str,
    samples: usize,
    input: &str,
    command: &mut tokio::process::Command,
) -> anyhow::Result<Row> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut samples_ms = Vec::with_capacity(samples);
    let mut wall = Duration::ZERO;
    for _ in 0..samples {
        let start = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {kind}"))?;
        let mut stdin = child.stdin.take().context("the child's stdin")?;
        stdin
            .write_all(input.as_bytes())
            .await
            .with_context(|| format!("writing to {kind}"))?;
        drop(stdin);
        let output = child
            .wait_with_output()
            .await
            .with_context(|| format!("waiting for {kind}"))?;
        let elapsed = start.elapsed();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "{kind} exited with {}: {}",
                output.status,
                stderr.lines().last().unwrap_or("")
            );
        }
        wall += elapsed;
        samples_ms.push(elapsed.as_secs_f64() * 1000.0);
    }
    Ok(Row::measured(backend, kind, 1, samples_ms, wall))
}

/// Runs a `cargo build` for a fixture of the bench: the cargo running this (`CARGO`),
/// else the one on `PATH`, with `CARGO_BUILD_TARGET` unset so the `--target` given
/// counts. Returns stdout; a failed build's error is `failed` and cargo's stderr.
pub async fn cargo_build(
    configure: impl FnOnce(&mut tokio::process::Command),
    failed: &str,
) -> anyhow::Result<Vec<u8>> {
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| find_on_path("cargo"))
        .context("cargo is not on the PATH: install Rust to build the bench's fixtures")?;
    let mut command = tokio::process::Command::new(cargo);
    command.arg("build").env_remove("CARGO_BUILD_TARGET");
    configure(&mut command);
    let output = command.output().await.context("running cargo")?;
    if !output.status.success() {
        bail!(
            "{failed}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// `name` in a directory of `PATH`, if there.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_peer_is_a_skipped_row_with_the_install_hint() {
        assert_eq!(find_on_path("surely-not-a-command-newt-bench"), None);
        let row = Row::skipped("wasm", peer::WASMTIME_RUN, 1, WASMTIME_HINT);
        assert_eq!(row.skipped.as_deref(), Some(WASMTIME_HINT));
        assert!(row.p50_ms.is_none());
    }

    #[test]
    fn commands_on_the_path_are_found() {
        assert!(find_on_path("sh").is_some());
    }

    #[tokio::test]
    async fn the_in_process_floor_measures_every_sample() {
        let workload = Workload {
            bundle: fixtures::echo_wasm().unwrap(),
            input: fixtures::INPUT,
            label: "echo".into(),
        };
        let row = in_process(&workload, 5).await.unwrap();
        assert_eq!(row.work.as_deref(), Some("both: echo"));
        assert_eq!(row.samples_ms.len(), 5);
        assert!(row.p50_ms.unwrap() > 0.0);
        assert!(row.calls_per_sec.unwrap() > 0.0);
    }
}
