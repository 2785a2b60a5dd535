//! OpenTelemetry traces of calls, exported over OTLP/HTTP with JSON bodies when
//! `newt serve --otlp-endpoint URL` is set.
//!
//! Each finished call becomes a trace: a `call {function}` span (attributes: the
//! function, version, call id, start kind, status) with one child per phase —
//! `queue` (waiting for an instance), `create` for a cold start or `claim` for a warm
//! or prewarmed one, `exec` (the function running) and `record` (handing the call's
//! record to the store) — timed from the call's own measurements. The trace id is the
//! call's id (a UUID is 16 bytes, as a trace id is), so a trace is found from
//! `x-newt-call-id`.
//!
//! Why hand-written instead of the `opentelemetry-otlp` crates: they bring their own
//! HTTP client version (a second reqwest and hyper stack next to ours), protobuf code
//! generation and an SDK pipeline, for what is here one JSON document per batch. The
//! OTLP/HTTP JSON encoding is stable (OTLP 1.0) and every collector accepts it.
//!
//! The exporter must never slow calls, and a dead collector must not grow memory:
//! it reads the service's call feed (a bounded broadcast; a publisher never waits),
//! keeps at most [`MAX_QUEUED_CALLS`] calls' span data (small: no logs, errors cut),
//! sends them every second (or at [`MAX_BATCH_CALLS`]) with a per-request timeout,
//! and drops what does not fit or fails, counting it in `/metrics`.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

use crate::service::{CallEvent, Service};
use crate::store::CallStatus;

/// Calls waiting to be exported; more are dropped (and counted).
pub const MAX_QUEUED_CALLS: usize = 2048;
/// Calls sent in one request at most.
pub const MAX_BATCH_CALLS: usize = 512;
/// How often what is queued is sent.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one export request may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Characters of a call's error a span's status carries.
const ERROR_CHARS: usize = 512;

/// The exporter's counters, shown in `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Calls whose spans the collector accepted.
    pub exported: AtomicU64,
    /// Calls whose spans were dropped: the queue was full, the exporter fell behind
    /// the feed, or the collector refused or did not answer.
    pub dropped: AtomicU64,
    /// Export requests that failed.
    pub failed_requests: AtomicU64,
}

/// Appends the exporter's counters to a `/metrics` page.
pub fn render(text: &mut String, stats: &ExportStats) {
    use std::fmt::Write as _;
    let lines = [
        (
            "newt_otlp_calls_exported_total",
            "Calls whose trace the OTLP collector accepted.",
            stats.exported.load(Ordering::Relaxed),
        ),
        (
            "newt_otlp_calls_dropped_total",
            "Calls whose trace was dropped (queue full, exporter behind, collector failing).",
            stats.dropped.load(Ordering::Relaxed),
        ),
        (
            "newt_otlp_export_failures_total",
            "OTLP export requests that failed.",
            stats.failed_requests.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in lines {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// The traces URL of an `--otlp-endpoint`: `http://host:port` gets OTLP's
/// `/v1/traces`; a URL that already ends in `/v1/traces` is used as it is.
pub fn traces_url(endpoint: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(endpoint)
        .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
    if url.scheme() != "http" {
        bail!(
            "--otlp-endpoint must be an http:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318), \
             got {endpoint:?}"
        );
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        bail!("--otlp-endpoint takes scheme://host:port[/path], got {endpoint:?}");
    }
    if url.path().ends_with("/v1/traces") {
        return Ok(url);
    }
    let base = url.as_str().trim_end_matches('/');
    reqwest::Url::parse(&format!("{base}/v1/traces")).context("building the traces URL")
}

/// What a call's spans need, without its logs.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSpans {
    call_id: String,
    function: String,
    version: i64,
    status: CallStatus,
    start: Option<newt_runtime::StartKind>,
    is_cold: bool,
    started_ms: i64,
    finished_ms: i64,
    queue_us: Option<i64>,
    init_us: Option<i64>,
    exec_us: Option<i64>,
    record_us: Option<i64>,
    error: Option<String>,
}

impl From<&CallEvent> for CallSpans {
    fn from(event: &CallEvent) -> Self {
        CallSpans {
            call_id: event.call_id.clone(),
            function: event.function.clone(),
            version: event.version,
            status: event.status,
            start: event.start,
            is_cold: event.start == Some(newt_runtime::StartKind::Cold),
            started_ms: event.started_at.unwrap_or(event.created_at),
            finished_ms: event.finished_at,
            queue_us: event.queue_us,
            init_us: event.init_us,
            exec_us: event.exec_us,
            record_us: event.record_us,
            error: event
                .error
                .as_ref()
                .map(|e| e.chars().take(ERROR_CHARS).collect()),
        }
    }
}

fn hex_id(call_id: &str, part: &str, bytes: usize) -> String {
    let digest = Sha256::digest(format!("{call_id}/{part}").as_bytes());
    hex::encode(&digest[..bytes])
}

fn attr(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

fn text(value: &str) -> Value {
    json!({ "stringValue": value })
}

fn nanos(ns: i64) -> String {
    ns.max(0).to_string()
}

impl CallSpans {
    /// The call's spans in OTLP JSON: the call, then its phases.
    pub fn to_otlp(&self) -> Vec<Value> {
        let trace_id = uuid::Uuid::parse_str(&self.call_id)
            .map(|id| id.simple().to_string())
            .unwrap_or_else(|_| hex_id(&self.call_id, "trace", 16));
        let call_span = hex_id(&self.call_id, "call", 8);
        let base_ns = self.started_ms.saturating_mul(1_000_000);
        let mut at = base_ns;
        let mut spans = Vec::new();
        let mut phase = |name: &str, micros: Option<i64>, at: &mut i64| {
            let Some(micros) = micros else { return };
            let end = *at + micros.max(0) * 1000;
            spans.push(json!({
                "traceId": trace_id,
                "spanId": hex_id(&self.call_id, name, 8),
                "parentSpanId": call_span,
                "name": name,
                "kind": 1,
                "startTimeUnixNano": nanos(*at),
                "endTimeUnixNano": nanos(end),
                "attributes": [attr("newt.call_id", text(&self.call_id))],
                "status": {},
            }));
            *at = end;
        };
        if self.queue_us.is_some() && self.exec_us.is_some() {
            phase("queue", self.queue_us, &mut at);
            let create = if self.is_cold { "create" } else { "claim" };
            phase(create, self.init_us, &mut at);
            phase("exec", self.exec_us, &mut at);
        } else {
            // It never reached an instance: its time went to waiting and failing.
            at = at.max(self.finished_ms.saturating_mul(1_000_000));
        }
        phase("record", self.record_us, &mut at);
        let end = at.max(self.finished_ms.saturating_mul(1_000_000));
        let status = match self.status {
            CallStatus::Done => json!({ "code": 1 }),
            _ => json!({
                "code": 2,
                "message": self.error.clone().unwrap_or_else(|| self.status.to_string()),
            }),
        };
        let mut attributes = vec![
            attr("newt.function", text(&self.function)),
            attr("faas.name", text(&self.function)),
            attr(
                "newt.version",
                json!({ "intValue": self.version.to_string() }),
            ),
            attr("newt.call_id", text(&self.call_id)),
            attr("faas.invocation_id", text(&self.call_id)),
            attr("newt.status", text(self.status.as_str())),
            attr("faas.coldstart", json!({ "boolValue": self.is_cold })),
        ];
        if let Some(start) = self.start {
            attributes.push(attr("newt.start", text(start.as_str())));
        }
        let call = json!({
            "traceId": trace_id,
            "spanId": call_span,
            "name": format!("call {}", self.function),
            "kind": 2,
            "startTimeUnixNano": nanos(base_ns),
            "endTimeUnixNano": nanos(end),
            "attributes": attributes,
            "status": status,
        });
        std::iter::once(call).chain(spans).collect()
    }
}

/// One OTLP/HTTP JSON export request for `calls`.
pub fn export_body(calls: &[CallSpans]) -> Value {
    let spans: Vec<Value> = calls.iter().flat_map(CallSpans::to_otlp).collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                attr("service.name", text("newt")),
                attr("service.version", text(env!("CARGO_PKG_VERSION"))),
            ]},
            "scopeSpans": [{
                "scope": { "name": "newt", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

/// A running exporter; [`RunningExporter::finish`] stops it.
#[derive(Debug)]
pub struct RunningExporter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningExporter {
    /// Exports what is queued (and what the feed still holds), then stops; waits at
    /// most [`EXPORT_TIMEOUT`] and a second.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(EXPORT_TIMEOUT + Duration::from_secs(1), self.task).await;
    }
}

/// Starts exporting the traces of `service`'s calls to `url`, until
/// [`RunningExporter::finish`] (at the end of a shutdown, so calls that finish during
/// its grace period are exported too).
pub fn spawn(service: &Arc<Service>, url: reqwest::Url) -> anyhow::Result<RunningExporter> {
    let stats = Arc::new(ExportStats::default());
    let _ = service.call_feed.exporter.set(stats.clone());
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .connect_timeout(EXPORT_TIMEOUT)
        .build()
        .context("building the OTLP client")?;
    // Subscribed now, so no call finishing from here on is missed.
    let mut feed = service.call_feed.subscribe();
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    tracing::info!(%url, "exporting call traces over OTLP/HTTP");
    let task = tokio::spawn(async move {
        let exporter = Exporter { client, url, stats };
        let mut queued: Vec<CallSpans> = Vec::new();
        let mut tick = tokio::time::interval(EXPORT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    exporter.send_all(&mut queued).await;
                }
                received = feed.recv() => match received {
                    Ok(event) => {
                        exporter.queue(&mut queued, &event);
                        if queued.len() >= MAX_BATCH_CALLS {
                            exporter.send_all(&mut queued).await;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        exporter.stats.dropped.fetch_add(missed, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        // What finished before the shutdown still goes out.
        while let Ok(event) = feed.try_recv() {
            exporter.queue(&mut queued, &event);
        }
        exporter.send_all(&mut queued).await;
    });
    Ok(RunningExporter { stop, task })
}

struct Exporter {
    client: reqwest::Client,
    url: reqwest::Url,
    stats: Arc<ExportStats>,
}

impl Exporter {
    fn queue(&self, queued: &mut Vec<CallSpans>, event: &CallEvent) {
        if queued.len() >= MAX_QUEUED_CALLS {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            queued.push(CallSpans::from(event));
        }
    }

    /// Sends everything queued, [`MAX_BATCH_CALLS`] per request; what fails is
    /// dropped (a collector that is down must not make newt hold traces).
    async fn send_all(&self, queued: &mut Vec<CallSpans>) {
        while !queued.is_empty() {
            let batch: Vec<CallSpans> = queued.drain(..queued.len().min(MAX_BATCH_CALLS)).collect();
            let count = batch.len() as u64;
            match self.send(&batch).await {
                Ok(()) => {
                    self.stats.exported.fetch_add(count, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.dropped.fetch_add(count, Ordering::Relaxed);
                    let failures = self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                    // The first failure, then one in a hundred: a collector that is
                    // down must not flood the log either.
                    if failures.is_multiple_of(100) {
                        tracing::warn!(url = %self.url, calls = count, "OTLP export failed: {e:#}");
                    }
                }
            }
        }
    }

    async fn send(&self, batch: &[CallSpans]) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&export_body(batch))?;
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .context("sending")?;
        let status = response.status();
        if !status.is_success() {
            bail!("the collector answered {status}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CallRecord;

    fn event(start: newt_runtime::StartKind) -> CallEvent {
        let record = CallRecord {
            id: "01938a6e-7b1c-7cc2-9d2a-3b4c5d6e7f80".into(),
            num: 3,
            function: "echo".into(),
            version: 1,
            status: CallStatus::Done,
            is_async: false,
            input: Vec::new(),
            output: None,
            error: None,
            logs: b"hello".to_vec(),
            start: Some(start),
            queue_us: Some(10),
            init_us: Some(200),
            exec_us: Some(3000),
            created_at: 1_700_000_000_000,
            started_at: Some(1_700_000_000_000),
            finished_at: Some(1_700_000_000_004),
            caller: None,
            attempts: 1,
        };
        let mut event = CallEvent::from_record(&record, 100);
        event.record_us = Some(5);
        event
    }

    #[test]
    fn a_call_is_a_span_with_its_four_phases_in_order() {
        let spans = CallSpans::from(&event(newt_runtime::StartKind::Cold)).to_otlp();
        let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["call echo", "queue", "create", "exec", "record"]);
        let call = &spans[0];
        assert_eq!(call["traceId"], "01938a6e7b1c7cc29d2a3b4c5d6e7f80");
        for child in &spans[1..] {
            assert_eq!(child["parentSpanId"], call["spanId"]);
            assert_eq!(child["traceId"], call["traceId"]);
        }
        // Phases follow each other: each starts where the one before ended.
        let ns = |v: &Value| v.as_str().unwrap().parse::<i64>().unwrap();
        for pair in spans[1..].windows(2) {
            assert_eq!(
                ns(&pair[0]["endTimeUnixNano"]),
                ns(&pair[1]["startTimeUnixNano"])
            );
        }
        assert_eq!(
            ns(&spans[3]["endTimeUnixNano"]) - ns(&spans[3]["startTimeUnixNano"]),
            3_000_000
        );
        assert!(ns(&call["endTimeUnixNano"]) >= ns(&spans[4]["endTimeUnixNano"]));
        assert_eq!(call["status"]["code"], 1);
        let warm = CallSpans::from(&event(newt_runtime::StartKind::Warm)).to_otlp();
        assert_eq!(warm[2]["name"], "claim");
    }

    #[test]
    fn endpoints_get_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap().as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces")
                .unwrap()
                .as_str(),
            "http://collector:4318/v1/traces"
        );
        assert!(traces_url("https://collector:4318").is_err());
        assert!(traces_url("collector:4318").is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let exporter = Exporter {
            client: reqwest::Client::new(),
            url: traces_url("http://127.0.0.1:9").unwrap(),
            stats: Arc::new(ExportStats::default()),
        };
        let mut queued = Vec::new();
        let event = event(newt_runtime::StartKind::Warm);
        for _ in 0..MAX_QUEUED_CALLS + 5 {
            exporter.queue(&mut queued, &event);
        }
        assert_eq!(queued.len(), MAX_QUEUED_CALLS);
        assert_eq!(exporter.stats.dropped.load(Ordering::Relaxed), 5);
    }
}
