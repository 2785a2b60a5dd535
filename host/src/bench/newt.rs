//! newt measured over HTTP: each backend's workload deployed under a `bench-` name, its
//! policy set for each start kind, and calls made from a keep-alive client at a
//! given concurrency. Every response's `x-newt-start` is checked against the kind the
//! row is meant to measure; mismatches are counted, not hidden.

use super::fixtures::{self, Workload};
use super::load::{Load, Sample, closed_loop, timed};
use super::report::{Row, peer};
use crate::client::Client;
use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often pools are looked at while waiting for instances.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The default `max_instances`; a row at a higher concurrency raises it to match, so
/// calls never queue behind the cap.
const DEFAULT_MAX_INSTANCES: usize = 16;

/// A backend newt runs the built-in function on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process wasmtime.
    Wasm,
    /// Containers of the `python` runtime.
    Python,
}

impl Backend {
    /// The backend's name in rows and function names.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Wasm => "wasm",
            Backend::Python => "python",
        }
    }

    /// The deploy query for this backend (containers: wait until built).
    fn deploy_query(self) -> &'static str {
        match self {
            Backend::Wasm => "",
            Backend::Python => "runtime=python&wait=true&",
        }
    }

    /// How long a pool may take to reach its `min_warm`.
    fn warm_timeout(self) -> Duration {
        match self {
            Backend::Wasm => Duration::from_secs(60),
            Backend::Python => Duration::from_secs(300),
        }
    }
}

/// How many calls each kind of row makes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The concurrencies measured.
    pub concurrency: Vec<usize>,
    /// Calls per row for cheap calls (wasm, warm containers, the in-process floor).
    pub fast_calls: usize,
    /// Calls per row for a container per call (python cold).
    pub slow_calls: usize,
    /// Samples of python prewarmed (a deploy each) and of the process-per-call peers.
    pub few_calls: usize,
}

/// The server under measurement.
#[derive(Debug, Clone)]
pub struct Newt {
    client: Arc<Client>,
    wasm: Arc<Workload>,
    python: Arc<Workload>,
}

impl Newt {
    /// Measures the server `client` talks to, running `wasm` and `python`.
    pub fn new(client: Client, wasm: Workload, python: Workload) -> Newt {
        Newt {
            client: Arc::new(client),
            wasm: Arc::new(wasm),
            python: Arc::new(python),
        }
    }

    /// What `backend`'s rows run.
    pub fn workload(&self, backend: Backend) -> &Workload {
        match backend {
            Backend::Wasm => &self.wasm,
            Backend::Python => &self.python,
        }
    }

    /// Whether the server's Docker engine answers, and if not why (`GET /healthz`).
    pub async fn docker(&self) -> anyhow::Result<Result<(), String>> {
        let health = self.client.get_json("/healthz").await?;
        let docker = &health["docker"];
        if docker["reachable"].as_bool() == Some(true) {
            return Ok(Ok(()));
        }
        let why = docker["error"].as_str().unwrap_or("no answer");
        Ok(Err(format!(
            "the server's Docker engine is not reachable ({why})"
        )))
    }

    async fn deploy(&self, name: &str, backend: Backend, query: &str) -> anyhow::Result<()> {
        let query = format!("{}{}", backend.deploy_query(), query);
        let bundle = self.workload(backend).bundle.clone();
        self.deploy_bundle(name, bundle, &query).await
    }

    async fn deploy_bundle(&self, name: &str, bundle: Vec<u8>, query: &str) -> anyhow::Result<()> {
        let path = format!("/v1/functions/{name}?{query}");
        let request = self
            .client
            .request(Method::PUT, path.trim_end_matches(['?', '&']))
            .body(bundle);
        self.client
            .send(request)
            .await
            .with_context(|| format!("deploying {name}"))?;
        Ok(())
    }

    async fn patch(&self, path: &str, policy: Value) -> anyhow::Result<()> {
        let request = self.client.request(Method::PATCH, path).json(&policy);
        self.client
            .send(request)
            .await
            .with_context(|| format!("PATCH {path} {policy}"))?;
        Ok(())
    }

    /// Removes a function if it exists.
    async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let request = self
            .client
            .request(Method::DELETE, &format!("/v1/functions/{name}"));
        let response = request
            .send()
            .await
            .with_context(|| format!("deleting {name}"))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(crate::client::server_error(response).await).with_context(|| format!("deleting {name}"))
    }

    /// Waits until `check` holds of `GET /v1/pools`.
    async fn wait_pools(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pools = self.client.get_json("/v1/pools").await?;
            if check(&pools) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what} did not happen within {}s", timeout.as_secs());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits until `name`'s pool has `n` idle instances.
    async fn wait_idle(&self, name: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_pools(&format!("{n} idle instances of {name}"), timeout, |pools| {
            pools["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["function"] == name && p["idle"].as_u64().unwrap_or(0) >= n as u64)
        })
        .await
    }

    /// Waits until the runtime-level pool of `runtime` has an idle instance.
    async fn wait_runtime_idle(&self, runtime: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_pools(
            &format!("an idle runtime-level {runtime} instance"),
            timeout,
            |pools| {
                pools["runtime_pools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["runtime"] == runtime && p["idle"].as_u64().unwrap_or(0) >= 1)
            },
        )
        .await
    }

    /// One call: its latency (ms, response body read) and its `x-newt-start`.
    async fn call(
        client: &Client,
        path: &str,
        input: &'static str,
    ) -> anyhow::Result<(f64, String)> {
        let start = Instant::now();
        let request = client.request(Method::POST, path).body(input);
        let response = client.send(request).await?;
        let kind = response
            .headers()
            .get("x-newt-start")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        response
            .bytes()
            .await
            .context("reading the call's output")?;
        Ok((start.elapsed().as_secs_f64() * 1000.0, kind))
    }

    /// The HTTP floor at each concurrency: `total` invokes of a function that does not
    /// exist, each expected to answer 404, through the same loop as the calls (with
    /// the wasm rows' input).
    pub async fn http_floor_rows(&self, concurrency: &[usize], total: usize) -> Vec<Row> {
        let mut rows = Vec::new();
        let input = self.wasm.input;
        let work = format!("a 404 (no function), against warm {}", self.wasm.label);
        for &c in concurrency {
            let client = self.client.clone();
            let load = closed_loop(total, c, move || {
                let client = client.clone();
                async move {
                    let request = client
                        .request(Method::POST, "/v1/functions/bench-no-such-function/invoke")
                        .body(input);
                    // Not `client.send`: that turns the 404 this row expects into an error.
                    let (ms, status) = timed(request).await?;
                    Ok(Sample {
                        ms,
                        expected: status == reqwest::StatusCode::NOT_FOUND,
                    })
                }
            })
            .await;
            rows.push(
                match load {
                    Ok(load) => {
                        let mut row =
                            Row::measured("wasm", peer::HTTP_FLOOR, c, load.samples_ms, load.wall);
                        row.start_mismatches = Some(load.mismatches);
                        row
                    }
                    Err(e) => Row::skipped("wasm", peer::HTTP_FLOOR, c, &format!("failed: {e:#}")),
                }
                .with_work(work.clone()),
            );
        }
        rows
    }

    /// `total` calls of `name` with `input`, `concurrency` in flight, each expected to
    /// start as `expect`.
    pub async fn load(
        &self,
        name: &str,
        input: &'static str,
        expect: &str,
        total: usize,
        concurrency: usize,
    ) -> anyhow::Result<Load> {
        let path = format!("/v1/functions/{name}/invoke");
        self.load_path(&path, input, expect, total, concurrency)
            .await
    }

    /// `total` POSTs of `input` to `path` with `concurrency` in flight, each expected
    /// to start as `expect`.
    async fn load_path(
        &self,
        path: &str,
        input: &'static str,
        expect: &str,
        total: usize,
        concurrency: usize,
    ) -> anyhow::Result<Load> {
        let path: Arc<str> = path.into();
        let expect: Arc<str> = expect.into();
        let client = self.client.clone();
        closed_loop(total, concurrency, move || {
            let (client, path, expect) = (client.clone(), path.clone(), expect.clone());
            async move {
                let (ms, kind) = Newt::call(&client, &path, input).await?;
                Ok(Sample {
                    ms,
                    expected: kind == *expect,
                })
            }
        })
        .await
    }
}

/// The backend of the wasi:http component's rows, newt's and `wasmtime serve`'s.
pub const COMPONENT: &str = "wasi:http";

impl Newt {
    /// newt's rows for a wasi:http component (the same bytes `wasmtime serve` runs):
    /// deployed as `bench-http-hello` with `concurrency` instances warm, and loaded at
    /// `/fn/bench-http-hello/` by the loop `wasmtime serve`'s rows go through.
    pub async fn component_rows(
        &self,
        component: &[u8],
        concurrency: &[usize],
        calls: usize,
    ) -> Vec<Row> {
        let name = "bench-http-hello";
        let deployed = async {
            self.delete(name).await?;
            self.deploy_bundle(name, component.to_vec(), "preload=none")
                .await
        }
        .await;
        if let Err(e) = deployed {
            let reason = format!("failed: {e:#}");
            return concurrency
                .iter()
                .map(|&c| Row::skipped(COMPONENT, "warm", c, &reason))
                .collect();
        }
        let mut rows = Vec::new();
        for &c in concurrency {
            let result = async {
                let policy = json!({"preload": "function", "min_warm": c,
                    "max_instances": c.max(DEFAULT_MAX_INSTANCES)});
                self.patch(&format!("/v1/functions/{name}"), policy).await?;
                self.wait_idle(name, c, Backend::Wasm.warm_timeout())
                    .await?;
                let load = self
                    .load_path(
                        &format!("/fn/{name}/"),
                        fixtures::HELLO_INPUT,
                        "warm",
                        calls.max(c),
                        c,
                    )
                    .await?;
                let mut row = Row::measured(COMPONENT, "warm", c, load.samples_ms, load.wall);
                row.start_mismatches = Some(load.mismatches);
                anyhow::Ok(row)
            }
            .await;
            rows.push(
                result.unwrap_or_else(|e| {
                    Row::skipped(COMPONENT, "warm", c, &format!("failed: {e:#}"))
                }),
            );
        }
        if let Err(e) = self.delete(name).await {
            eprintln!("bench: could not delete {name}: {e:#}");
        }
        rows
    }
}

/// The rows newt is measured in for `backend`: (start kind, concurrency). Python
/// `prewarmed` deploys a function per sample, so it runs one call at a time only.
pub fn expected_rows(backend: Backend, plan: &Plan) -> Vec<(&'static str, usize)> {
    let mut rows = Vec::new();
    for kind in super::report::START_KINDS {
        if kind == "prewarmed" && backend == Backend::Python {
            rows.push((kind, 1));
            continue;
        }
        rows.extend(plan.concurrency.iter().map(|&c| (kind, c)));
    }
    rows
}

/// Records every row of `backend` as skipped, with `reason`.
pub fn skip_all(backend: Backend, plan: &Plan, reason: &str, record: &mut impl FnMut(Row)) {
    for (kind, c) in expected_rows(backend, plan) {
        record(Row::skipped(backend.name(), kind, c, reason));
    }
}

/// A row from a burst of calls.
fn row_from(backend: Backend, kind: &str, concurrency: usize, load: Load) -> Row {
    let mut row = Row::measured(
        backend.name(),
        kind,
        concurrency,
        load.samples_ms,
        load.wall,
    );
    row.start_mismatches = Some(load.mismatches);
    row
}

/// A row, or the row skipped with the reason it failed.
fn row_or_failure(
    backend: Backend,
    kind: &str,
    concurrency: usize,
    result: anyhow::Result<Row>,
) -> Row {
    result.unwrap_or_else(|e| {
        Row::skipped(backend.name(), kind, concurrency, &format!("failed: {e:#}"))
    })
}

/// Every start kind of `backend` at every concurrency of `plan`; `record` gets each
/// row as it is measured.
pub async fn backend_rows(
    newt: &Newt,
    backend: Backend,
    plan: &Plan,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    let name = format!("bench-{}", backend.name());
    let input = newt.workload(backend).input;
    let max_instances = |c: usize| c.max(DEFAULT_MAX_INSTANCES);
    let deployed = async {
        newt.delete(&name).await?;
        newt.deploy(&name, backend, "preload=none").await
    }
    .await;
    if let Err(e) = deployed {
        skip_all(backend, plan, &format!("failed: {e:#}"), record);
        return Ok(());
    }

    let cold_calls = match backend {
        Backend::Wasm => plan.fast_calls,
        Backend::Python => plan.slow_calls,
    };
    for &c in &plan.concurrency {
        let result = async {
            let policy =
                json!({"preload": "none", "min_warm": 0, "max_instances": max_instances(c)});
            newt.patch(&format!("/v1/functions/{name}"), policy).await?;
            let load = newt
                .load(&name, input, "cold", cold_calls.max(c), c)
                .await?;
            Ok(row_from(backend, "cold", c, load))
        }
        .await;
        record(row_or_failure(backend, "cold", c, result));
    }

    match backend {
        Backend::Wasm => {
            for &c in &plan.concurrency {
                let result = async {
                    let policy = json!({"preload": "runtime", "min_warm": 0, "max_instances": max_instances(c)});
                    newt.patch(&format!("/v1/functions/{name}"), policy).await?;
                    let load = newt.load(&name, input, "prewarmed", plan.fast_calls.max(c), c).await?;
                    Ok(row_from(backend, "prewarmed", c, load))
                }
                .await;
                record(row_or_failure(backend, "prewarmed", c, result));
            }
        }
        Backend::Python => {
            let result = python_prewarmed(newt, plan.few_calls).await;
            record(row_or_failure(backend, "prewarmed", 1, result));
        }
    }

    for &c in &plan.concurrency {
        let result = async {
            let policy =
                json!({"preload": "function", "min_warm": c, "max_instances": max_instances(c)});
            newt.patch(&format!("/v1/functions/{name}"), policy).await?;
            newt.wait_idle(&name, c, backend.warm_timeout()).await?;
            let load = newt
                .load(&name, input, "warm", plan.fast_calls.max(c), c)
                .await?;
            Ok(row_from(backend, "warm", c, load))
        }
        .await;
        record(row_or_failure(backend, "warm", c, result));
    }
    newt.delete(&name).await
}

/// Python `prewarmed`, one call at a time: the runtime keeps a generic container
/// waiting; each sample deploys a fresh function (same bundle) and calls it once,
/// so the call takes that container and loads the function into it.
async fn python_prewarmed(newt: &Newt, samples: usize) -> anyhow::Result<Row> {
    let backend = Backend::Python;
    newt.patch(
        "/v1/runtimes/python",
        json!({"preload": "runtime", "min_warm": 1}),
    )
    .await?;
    let measured = async {
        let mut load = Load::default();
        for i in 0..samples {
            let name = format!("bench-python-prewarmed-{i}");
            newt.delete(&name).await?;
            newt.deploy(&name, backend, "").await?;
            newt.wait_runtime_idle("python", backend.warm_timeout())
                .await?;
            let input = newt.python.input;
            let (ms, kind) =
                Newt::call(&newt.client, &format!("/v1/functions/{name}/invoke"), input)
                    .await
                    .with_context(|| format!("calling {name}"))?;
            // Only the calls count toward calls/s, not the deploys between them.
            load.wall += Duration::from_secs_f64(ms / 1000.0);
            load.samples_ms.push(ms);
            load.mismatches += u64::from(kind != "prewarmed");
            newt.delete(&name).await?;
        }
        anyhow::Ok(load)
    }
    .await;
    // Put the runtime back however the samples went.
    let restored = newt
        .patch(
            "/v1/runtimes/python",
            json!({"preload": "function", "min_warm": 0}),
        )
        .await;
    let load = measured?;
    restored?;
    Ok(row_from(backend, "prewarmed", 1, load))
}
