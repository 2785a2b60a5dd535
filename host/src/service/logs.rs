//! The feed of finished calls: every call, once its final record is written, is
//! published here for whoever follows it (`GET /v1/functions/{name}/logs?follow=true`,
//! the OTLP exporter), and the recent calls' logs are read back from the store.
//!
//! Publishing never waits: the feed is a `tokio::sync::broadcast` channel of bounded
//! capacity. A follower that falls behind loses the oldest events and is told how
//! many (it never slows a call down); with nobody subscribed nothing is kept. Each
//! event carries at most [`FEED_LOG_BYTES`] of the call's logs, so the feed holds at
//! most [`FEED_CAPACITY`] × that; a follower reads the rest from the store when an
//! event says its logs were cut. Events are built from call records, which never
//! hold a function's secrets.

use newt_runtime::StartKind;
use std::sync::{Arc, OnceLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use super::{Service, ServiceResult};
use crate::api::error::ApiError;
use crate::store::{CallFilter, CallRecord, CallStatus};

/// Events the feed keeps for a follower that is behind; past this it lags.
pub const FEED_CAPACITY: usize = 256;
/// Bytes of a call's logs an event carries; the rest stays in the store.
pub const FEED_LOG_BYTES: usize = 64 << 10;
/// Followers (`?follow=true` streams) open at once; one more gets 429.
pub const MAX_FOLLOWERS: usize = 64;
/// Rows of call summaries a backlog query reads at most, whatever its `since`.
const MAX_BACKLOG_SCAN: usize = 20_000;
/// Summaries read per page while scanning the backlog.
const BACKLOG_PAGE: usize = 500;

/// A finished call, as its followers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct CallEvent {
    /// The call's id (UUID v7).
    pub call_id: String,
    /// The call's number, increasing per host.
    pub num: i64,
    /// The function called.
    pub function: String,
    /// The version that ran.
    pub version: i64,
    /// Its final status.
    pub status: CallStatus,
    /// How it found its instance; `None` if it never got one.
    pub start: Option<StartKind>,
    /// The invoke token's name it came with (for filtering; never sent).
    pub caller: Option<String>,
    /// When it was accepted / started / finished, unix milliseconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: i64,
    /// Phase timings in microseconds, when the call reached an instance.
    pub queue_us: Option<i64>,
    pub init_us: Option<i64>,
    pub exec_us: Option<i64>,
    /// Microseconds spent handing the final record to the store (write-behind).
    pub record_us: Option<i64>,
    /// What the function wrote to stderr, as text (invalid UTF-8 replaced), cut to
    /// [`FEED_LOG_BYTES`] on the feed.
    pub logs: String,
    /// Whether `logs` was cut (the store has all of it).
    pub logs_truncated: bool,
    /// What went wrong, for a call that did not succeed.
    pub error: Option<String>,
}

impl CallEvent {
    /// The event of a final `record`, with at most `max_log_bytes` of its logs.
    pub fn from_record(record: &CallRecord, max_log_bytes: usize) -> CallEvent {
        let cut = record.logs.len() > max_log_bytes;
        let mut logs = &record.logs[..record.logs.len().min(max_log_bytes)];
        if cut {
            // Cut on a character boundary, so the text does not end in a replacement
            // character (an invalid sequence earlier on is the function's own).
            if let Err(e) = std::str::from_utf8(logs)
                && e.error_len().is_none()
            {
                logs = &logs[..e.valid_up_to()];
            }
        }
        CallEvent {
            call_id: record.id.clone(),
            num: record.num,
            function: record.function.clone(),
            version: record.version,
            status: record.status,
            start: record.start,
            caller: record.caller.clone(),
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at: record.finished_at.unwrap_or(record.created_at),
            queue_us: record.queue_us,
            init_us: record.init_us,
            exec_us: record.exec_us,
            record_us: None,
            logs: String::from_utf8_lossy(logs).into_owned(),
            logs_truncated: cut,
            error: record.error.clone(),
        }
    }

    /// How long the call took: its phases when it reached an instance, else from its
    /// start (or acceptance) to its end. Milliseconds.
    pub fn duration_ms(&self) -> f64 {
        match (self.queue_us, self.init_us, self.exec_us) {
            (Some(q), Some(i), Some(e)) => (q + i + e) as f64 / 1000.0,
            _ => (self.finished_at - self.started_at.unwrap_or(self.created_at)).max(0) as f64,
        }
    }
}

/// Whether a call in `status` has ended (its logs are complete).
pub fn is_final(status: CallStatus) -> bool {
    !matches!(status, CallStatus::Pending | CallStatus::Running)
}

/// The broadcast of finished calls and the followers' places.
#[derive(Debug)]
pub struct CallFeed {
    sender: broadcast::Sender<Arc<CallEvent>>,
    followers: Arc<Semaphore>,
    /// The OTLP exporter's counters, when one runs (for `/metrics`).
    pub exporter: OnceLock<Arc<crate::telemetry::ExportStats>>,
}

impl Default for CallFeed {
    fn default() -> Self {
        CallFeed {
            sender: broadcast::Sender::new(FEED_CAPACITY),
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            exporter: OnceLock::new(),
        }
    }
}

impl CallFeed {
    /// Publishes a finished call; never waits. With no subscriber, nothing is kept.
    pub fn publish(&self, event: CallEvent) {
        if self.is_followed() {
            let _ = self.sender.send(Arc::new(event));
        }
    }

    /// Whether anyone receives what is published.
    pub fn is_followed(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// A receiver of every call published from now on (for the exporter: it takes no
    /// follower's place).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CallEvent>> {
        self.sender.subscribe()
    }

    /// A follower's place and receiver, or 429 when [`MAX_FOLLOWERS`] are open. The
    /// place is given back when the permit is dropped (the stream ends or its client
    /// goes away).
    pub fn follow(
        &self,
    ) -> ServiceResult<(broadcast::Receiver<Arc<CallEvent>>, OwnedSemaphorePermit)> {
        let permit =
            self.followers
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::TooManyRequests {
                    message: format!(
                        "{MAX_FOLLOWERS} log streams are already open on this server: close one or \
                     retry later"
                    ),
                    retry_after: 5,
                })?;
        Ok((self.sender.subscribe(), permit))
    }
}

/// Which recent calls a logs query wants.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    /// Only calls that finished at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Only this call (its UUID or number).
    pub call: Option<String>,
    /// At most this many calls (the newest of them).
    pub limit: usize,
    /// Only calls made with this invoke token (`None`: all).
    pub caller: Option<String>,
}

impl Service {
    /// Publishes a call's final record to its followers; `record_us` is how long the
    /// record took to hand to the store.
    pub(super) fn publish_call(&self, record: &CallRecord, record_us: Option<i64>) {
        if !self.call_feed.is_followed() {
            return;
        }
        let mut event = CallEvent::from_record(record, FEED_LOG_BYTES);
        event.record_us = record_us;
        self.call_feed.publish(event);
    }

    /// Hands a call's final record to the store (write-behind), then publishes it to
    /// the feed with how long that took, when anyone follows the feed.
    pub(super) async fn record_and_publish(&self, record: CallRecord) {
        let event = self
            .call_feed
            .is_followed()
            .then(|| CallEvent::from_record(&record, FEED_LOG_BYTES));
        let recording = std::time::Instant::now();
        self.store.record_call(record).await;
        if let Some(mut event) = event {
            event.record_us = Some(recording.elapsed().as_micros() as i64);
            self.call_feed.publish(event);
        }
    }

    /// A receiver that resolves once the server is shutting down (log streams end then,
    /// so a graceful shutdown does not wait on them).
    pub fn stopping_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// The numbers of the finished calls of `function` that `query` selects, oldest
    /// first. Reads summaries (no payloads) newest first, page by page, and stops at
    /// `query.limit` matches, or at calls accepted more than the longest call timeout
    /// before `since` (no later call can have finished after it), or after
    /// [`MAX_BACKLOG_SCAN`] rows.
    pub async fn recent_calls(&self, function: &str, query: &LogQuery) -> ServiceResult<Vec<i64>> {
        if let Some(call) = &query.call {
            let found = if uuid::Uuid::parse_str(call).is_ok() {
                self.store.get_call(call).await?
            } else if let Ok(num) = call.parse::<i64>() {
                self.store.get_call_by_num(num).await?
            } else {
                return Err(ApiError::BadRequest(format!(
                    "call must be a call's id (x-newt-call-id) or number, got {:?}",
                    call.chars().take(80).collect::<String>()
                )));
            };
            return Ok(found
                .filter(|c| c.function == function && is_final(c.status))
                .filter(|c| query.caller.is_none() || c.caller == query.caller)
                .filter(|c| query.since_ms.is_none_or(|s| c.finished_at >= Some(s)))
                .map(|c| vec![c.num])
                .unwrap_or_default());
        }
        let oldest_relevant = query
            .since_ms
            .map(|s| s.saturating_sub(newt_runtime::MAX_TIMEOUT_MS as i64));
        let mut nums = Vec::new();
        let mut before = None;
        let mut scanned = 0;
        'pages: while scanned < MAX_BACKLOG_SCAN && nums.len() < query.limit {
            let page = self
                .store
                .list_calls(CallFilter {
                    function: Some(function.to_string()),
                    limit: BACKLOG_PAGE,
                    before_num: before,
                    caller: query.caller.clone(),
                    ..CallFilter::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.num);
            scanned += page.len();
            for call in &page {
                if oldest_relevant.is_some_and(|oldest| call.created_at < oldest) {
                    break 'pages;
                }
                let recent = query
                    .since_ms
                    .is_none_or(|s| call.finished_at.is_some_and(|f| f >= s));
                if is_final(call.status) && recent {
                    nums.push(call.num);
                    if nums.len() >= query.limit {
                        break 'pages;
                    }
                }
            }
            if page.len() < BACKLOG_PAGE {
                break;
            }
        }
        nums.reverse();
        Ok(nums)
    }

    /// The event of finished call `num` with all of its logs, if it exists.
    pub async fn call_event(&self, num: i64) -> ServiceResult<Option<CallEvent>> {
        Ok(self
            .store
            .get_call_by_num(num)
            .await?
            .filter(|c| is_final(c.status))
            .map(|c| CallEvent::from_record(&c, usize::MAX)))
    }

    /// `event` with all of its logs: read from the store when the feed cut them.
    pub async fn complete_event(&self, event: Arc<CallEvent>) -> Arc<CallEvent> {
        if !event.logs_truncated {
            return event;
        }
        match self.store.get_call(&event.call_id).await {
            Ok(Some(record)) => {
                let mut full = CallEvent::from_record(&record, usize::MAX);
                full.record_us = event.record_us;
                Arc::new(full)
            }
            _ => event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(logs: &[u8]) -> CallRecord {
        CallRecord {
            id: "0190-call".into(),
            num: 7,
            function: "echo".into(),
            version: 2,
            status: CallStatus::Done,
            is_async: false,
            input: b"secret input".to_vec(),
            output: Some(b"out".to_vec()),
            error: None,
            logs: logs.to_vec(),
            start: Some(StartKind::Warm),
            queue_us: Some(1000),
            init_us: Some(0),
            exec_us: Some(2500),
            created_at: 1_000,
            started_at: Some(1_001),
            finished_at: Some(1_005),
            caller: None,
            attempts: 1,
        }
    }

    #[test]
    fn events_cut_long_logs_on_a_character_boundary() {
        // "é" is two bytes: a cut after its first keeps "a", not half a character.
        let event = CallEvent::from_record(&record("aéb".as_bytes()), 2);
        assert_eq!(event.logs, "a");
        assert!(event.logs_truncated);
        let whole = CallEvent::from_record(&record(b"hello\n"), FEED_LOG_BYTES);
        assert_eq!(whole.logs, "hello\n");
        assert!(!whole.logs_truncated);
        assert_eq!(whole.duration_ms(), 3.5);
    }

    #[test]
    fn publishing_without_followers_keeps_nothing_and_followers_are_capped() {
        let feed = CallFeed::default();
        feed.publish(CallEvent::from_record(&record(b"x"), 10));
        let mut places = Vec::new();
        for _ in 0..MAX_FOLLOWERS {
            places.push(feed.follow().unwrap());
        }
        assert!(matches!(
            feed.follow(),
            Err(ApiError::TooManyRequests { .. })
        ));
        // A follower that leaves frees its place.
        places.pop();
        let (mut rx, _permit) = feed.follow().unwrap();
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        feed.publish(CallEvent::from_record(&record(b"x"), 10));
        assert_eq!(rx.try_recv().unwrap().num, 7);
    }

    #[test]
    fn a_slow_follower_lags_and_is_told_how_many_it_missed() {
        let feed = CallFeed::default();
        let (mut rx, _permit) = feed.follow().unwrap();
        for _ in 0..FEED_CAPACITY + 3 {
            feed.publish(CallEvent::from_record(&record(b"x"), 10));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(3))
        ));
    }
}
