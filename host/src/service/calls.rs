//! The call path: a request becomes a call record, runs on the invoker under one
//! absolute deadline, and its outcome is recorded. Sync calls run on the caller's
//! future (a caller that goes away cancels the call: its record says `cancelled`);
//! async calls are durable before their 202 and run in the background.
//!
//! Async calls are at-least-once across crashes: each start is durable before the
//! function runs, so a restart finds the calls a dead process left `running` and
//! starts them again, counting the attempt in the record (see
//! [`Store::recover`](crate::store::Store::recover)). At shutdown, queued async calls
//! are not started (they stay `pending` and run after the restart) and running ones
//! get the grace period to finish.

use bytes::Bytes;
use newt_runtime::{CallOutcome, CallRequest, FunctionSpec, HttpRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::{Service, ServiceResult, now_ms};
use crate::api::error::{ApiError, is_disk_full};
use crate::store::{CallRecord, CallStatus, SharedStore, VersionStatus};

/// A sync call that ran (or could not run).
#[derive(Debug)]
pub struct Invoked {
    /// The call's id (`x-newt-call-id`).
    pub call_id: String,
    /// The call's number (the seed's `callNum`).
    pub num: i64,
    /// The function's name.
    pub function: String,
    /// What the engine said.
    pub outcome: Result<CallOutcome, newt_runtime::Error>,
}

/// A call record in flight: if a sync call's future is dropped before the outcome is
/// recorded (the client went away), the record becomes `cancelled`.
struct InFlight {
    store: SharedStore,
    record: Option<CallRecord>,
    started: Instant,
    /// For the metrics of a cancelled call.
    service: Arc<Service>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if record.is_async {
            // Nobody waits on an async call's future: it is dropped only when the
            // process stops with the call still running (the shutdown grace ended).
            // Its durable `running` record stays, so the next start runs it again
            // and counts the attempt; `cancelled` would lose it.
            tracing::warn!(call = %record.id, function = %record.function,
                "async call stopped by the shutdown; the next start runs it again");
            return;
        }
        record.status = CallStatus::Cancelled;
        record.error = Some("the caller went away before the call finished".into());
        record.finished_at = Some(now_ms());
        self.service.metrics.record_call(
            &record.function,
            CallStatus::Cancelled.as_str(),
            None,
            self.started.elapsed(),
        );
        tracing::info!(call = %record.id, function = %record.function, "call cancelled by its caller");
        self.service.publish_call(&record, None);
        let store = self.store.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { store.record_call(record).await });
        }
    }
}

/// A place in the async backlog, given back when the call ends however it ends.
struct BacklogSlot(Arc<AtomicUsize>);

impl Drop for BacklogSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Service {
    /// The spec calls of `name` run. A function whose only versions are building or
    /// failed answers 409 with what to do. `FN@3` and `FN:alias` name another version
    /// (see [`super::versions`]).
    pub fn serving(&self, name: &str) -> ServiceResult<Arc<FunctionSpec>> {
        if let Some((function, target)) = super::versions::split_target(name)? {
            return self.target_spec(function, &target);
        }
        super::deploy::validate_name(name)?;
        if let Some(spec) = self.registry.serving(name) {
            return Ok(spec);
        }
        let newest = self.newest(name)?;
        Err(match newest.status {
            VersionStatus::Pending => ApiError::Conflict(format!(
                "function `{name}` is still being built: retry when GET /v1/functions/{name} \
                 says ready"
            )),
            _ => ApiError::Conflict(format!(
                "function `{name}` has no runnable version: its build failed ({}); deploy a fixed \
                 bundle",
                newest
                    .status_message
                    .as_deref()
                    .unwrap_or("see GET /v1/functions/{name}")
            )),
        })
    }

    pub(super) fn new_call(
        &self,
        spec: &FunctionSpec,
        input: Bytes,
        is_async: bool,
        caller: Option<String>,
    ) -> CallRecord {
        CallRecord {
            id: uuid::Uuid::now_v7().to_string(),
            num: self.store.next_call_num(),
            function: spec.name.clone(),
            version: spec.version,
            status: CallStatus::Pending,
            is_async,
            input: input.to_vec(),
            output: None,
            error: None,
            logs: Vec::new(),
            start: None,
            queue_us: None,
            init_us: None,
            exec_us: None,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            caller,
            attempts: 1,
        }
    }

    /// Runs a sync call of `name` for `caller` (an invoke token's name) and records it.
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        input: Bytes,
        caller: Option<String>,
    ) -> ServiceResult<Invoked> {
        let spec = self.serving(name)?;
        let record = self.new_call(&spec, input, false, caller);
        let (call_id, num) = (record.id.clone(), record.num);
        let outcome = self.run_call(record, &spec, None).await;
        Ok(Invoked {
            call_id,
            num,
            function: spec.name.clone(),
            outcome,
        })
    }

    /// Accepts an async call of `name`: durable before this returns, run in the
    /// background. Returns the record as accepted.
    pub async fn invoke_async(
        self: &Arc<Self>,
        name: &str,
        input: Bytes,
        caller: Option<String>,
    ) -> ServiceResult<CallRecord> {
        let spec = self.serving(name)?;
        // A call of a named version (`FN@3`, `FN:alias`) runs the version picked now;
        // a plain one, the version serving when it runs.
        let pinned = super::versions::split_target(name)?.map(|_| spec.clone());
        let record = self.new_call(&spec, input, true, caller);
        let max = self.config.max_async_backlog;
        let reserved = self
            .async_backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return Err(ApiError::TooManyRequests {
                message: format!("{max} async calls are already waiting: retry later"),
                retry_after: 1,
            });
        }
        let slot = BacklogSlot(self.async_backlog.clone());
        // Durable before the 202: an accepted call survives a crash and runs after
        // the restart.
        self.store
            .record_call_durable(record.clone())
            .await
            .map_err(|e| match is_disk_full(e.as_ref()) {
                true => ApiError::disk_full(
                    "the call could not be recorded, so it was not accepted and did not run",
                    &e,
                ),
                false => ApiError::Unavailable(format!("the call was not accepted: {e:#}")),
            })?;
        self.spawn_async(record.clone(), slot, pinned);
        Ok(record)
    }

    /// Runs an accepted async call found at start.
    pub(super) fn resume_async(self: &Arc<Self>, record: CallRecord) {
        self.async_backlog.fetch_add(1, Ordering::AcqRel);
        let slot = BacklogSlot(self.async_backlog.clone());
        // Which version a call named is not stored: after a restart it runs the
        // serving version.
        self.spawn_async(record, slot, None);
    }

    /// Runs an accepted async call in the background, at most `async_concurrency` at
    /// once, with `pinned` (a named version) or else the serving version. Once the server is shutting
    /// down, a call still waiting for its turn is not started: it stays `pending` in
    /// the store and runs after the restart.
    fn spawn_async(
        self: &Arc<Self>,
        mut record: CallRecord,
        slot: BacklogSlot,
        pinned: Option<Arc<FunctionSpec>>,
    ) {
        // The input is in the store (durable before the 202): a call waiting for its
        // turn holds only its record, so a backlog of large inputs costs no memory.
        record.input = Vec::new();
        let service = self.clone();
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let permit = tokio::select! {
                biased;
                _ = stopping.wait_for(|stopping| *stopping) => None,
                permit = service.async_slots.clone().acquire_owned() => permit.ok(),
            };
            // A permit granted as the shutdown began is given back unused.
            let Some(_permit) = permit.filter(|_| !service.is_stopping()) else {
                tracing::debug!(call = %record.id, "shutting down: the async call stays pending");
                return;
            };
            let record = match service.store.get_call(&record.id).await {
                Ok(Some(full)) => full,
                Ok(None) => {
                    tracing::error!(call = %record.id, "an accepted async call is missing from the store");
                    return;
                }
                Err(e) => {
                    tracing::error!(call = %record.id, "reading an accepted async call: {e:#}");
                    return;
                }
            };
            let spec = match pinned {
                Some(spec) if service.registry.contains(&record.function) => Some(spec),
                Some(_) => None,
                None => service.registry.serving(&record.function),
            };
            match spec {
                Some(spec) => {
                    if let Err(e) = service.run_call(record, &spec, None).await {
                        tracing::warn!("async call failed to run: {e}");
                    }
                }
                None => {
                    let mut record = record;
                    record.status = CallStatus::Failed;
                    record.error = Some(format!(
                        "function `{}` was deleted before the call ran",
                        record.function
                    ));
                    record.finished_at = Some(now_ms());
                    service.record_and_publish(record).await;
                }
            }
        });
    }

    /// Runs a call under one deadline (now + the function's timeout, covering queue,
    /// start and run) and records it: `running` when it starts, its outcome when it
    /// ends, `cancelled` if a sync call's future is dropped in between. A sync call's
    /// writes are write-behind: its caller never waits on the disk. An async call's
    /// start is durable before it runs, so that after a crash the store knows this
    /// attempt began: the restart then runs it again as its next attempt instead of
    /// running it a second time unrecorded. If that write fails, the call fails
    /// without running. `http` is the request of a call that came in on a route.
    pub(super) async fn run_call(
        self: &Arc<Self>,
        mut record: CallRecord,
        spec: &Arc<FunctionSpec>,
        http: Option<Arc<HttpRequest>>,
    ) -> Result<CallOutcome, newt_runtime::Error> {
        let started = Instant::now();
        let deadline = started + spec.limits.timeout();
        record.status = CallStatus::Running;
        record.version = spec.version;
        record.started_at = Some(now_ms());
        let request = CallRequest {
            call_id: record.id.clone(),
            input: Bytes::copy_from_slice(&record.input),
            http,
        };
        // The guard exists before the first await: from here on, a dropped call is
        // recorded as cancelled.
        let mut in_flight = InFlight {
            store: self.store.clone(),
            record: Some(record.clone()),
            started,
            service: self.clone(),
        };
        if record.is_async {
            if let Err(e) = self.store.record_call_durable(record).await {
                let mut record = in_flight.record.take().expect("recorded once");
                let error = format!("the call could not start: recording its start failed: {e:#}");
                tracing::error!(call = %record.id, function = %record.function, "{error}");
                self.metrics
                    .record_call(&spec.name, "error", None, started.elapsed());
                record.status = CallStatus::Failed;
                record.error = Some(error.clone());
                record.finished_at = Some(now_ms());
                // Write-behind: if the store takes it, the call ends `failed`; if not,
                // it stays `pending` and the next start runs it.
                self.store.record_call(record).await;
                return Err(newt_runtime::Error::Unavailable {
                    backend: "store",
                    reason: error,
                });
            }
        } else {
            self.store.record_call(record).await;
        }

        let outcome = match self
            .reserve_payloads(spec, request.input.len(), deadline)
            .await
        {
            Ok(_payloads) => self.invoker.invoke(spec, request, deadline).await,
            Err(full) => Err(full),
        };

        let mut record = in_flight.record.take().expect("recorded once");
        record.finished_at = Some(now_ms());
        match &outcome {
            Ok(outcome) => {
                let status = CallStatus::from(&outcome.result);
                self.metrics.record_call(
                    &spec.name,
                    status.as_str(),
                    Some(outcome.start),
                    started.elapsed(),
                );
                record.status = status;
                record.error = outcome.result.message().map(str::to_string);
                record.output = Some(outcome.output.to_vec());
                record.logs = outcome.logs.to_vec();
                record.start = Some(outcome.start);
                record.queue_us = Some(outcome.timings.queue.as_micros() as i64);
                record.init_us = Some(outcome.timings.init.as_micros() as i64);
                record.exec_us = Some(outcome.timings.exec.as_micros() as i64);
            }
            Err(e) => {
                self.metrics
                    .record_call(&spec.name, "error", None, started.elapsed());
                record.status = CallStatus::Failed;
                record.error = Some(e.to_string());
            }
        }
        // Also publishes it to the call's followers (logs, traces).
        self.record_and_publish(record).await;
        outcome
    }
}
