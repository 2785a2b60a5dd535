//! `GET /v1/functions/{name}/logs`: the logs of a function's calls, recent ones from
//! the store and, with `follow=true`, each call as it finishes (server-sent events).
//!
//! Query: `since` (a duration back from now, `10m`, or an RFC 3339 time), `call` (one
//! call, by id or number), `limit` (the newest N of the recent calls), `follow`.
//! Without `follow` the answer is one JSON object per line, oldest first, unless the
//! client asks for `text/event-stream`; with it, the recent calls (only those `since`
//! or `limit` select) come first, then the live ones, as `event: call` events, with a
//! `: keep-alive` comment every [`HEARTBEAT`] (which also keeps the connection's idle
//! timeout from closing a quiet stream). The stream subscribes to the live feed before
//! it reads the backlog and skips live calls the backlog already sent: no gap, no
//! repeat. It ends when the server shuts down, when its client goes away (freeing
//! its follower's place) or, with `call`, once that call was sent.

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::service::{CallEvent, LogQuery, SharedService, now_ms};

/// How often a quiet stream sends a `: keep-alive` comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Recent calls listed when no `limit` is given (without `follow`).
const DEFAULT_LIMIT: usize = 100;
/// The most recent calls one request replays.
const MAX_LIMIT: usize = 1000;
/// Chunks a stream buffers for its client.
const STREAM_BUFFER: usize = 16;
/// How long a stream waits for a client that does not read before it gives up (and
/// frees its place).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A call's log event on the wire.
pub fn event_json(event: &CallEvent) -> serde_json::Value {
    json!({
        "call_id": event.call_id,
        "num": event.num,
        "function": event.function,
        "version": event.version,
        "status": event.status.as_str(),
        "start": event.start.map(|s| s.as_str()),
        "time": rfc3339(event.finished_at),
        "started_at": event.started_at,
        "finished_at": event.finished_at,
        "duration_ms": event.duration_ms(),
        "logs": event.logs,
        "logs_truncated": event.logs_truncated,
        "error": event.error,
    })
}

/// `GET /v1/functions/{name}/logs?since=&call=&limit=&follow=`.
#[utoipa::path(
    get,
    path = "/v1/functions/{name}/logs",
    tag = "calls",
    params(
        ("name" = String, Path, description = "The function"),
        ("since" = Option<String>, Query, description = "Only calls that finished since: a duration back from now (10m) or an RFC 3339 time"),
        ("call" = Option<String>, Query, description = "Only this call (its UUID or number)"),
        ("limit" = Option<usize>, Query, description = "The newest N recent calls (1-1000; default 100, 0 replayed when following without since)"),
        ("follow" = Option<bool>, Query, description = "Stream calls as they finish (server-sent events) until the client leaves or the server stops"),
    ),
    responses(
        (status = 200, description = "One JSON object per call per line, oldest first; with follow=true or Accept: text/event-stream, `event: call` server-sent events", content((String = "application/x-ndjson"), (String = "text/event-stream"))),
        (status = 400, description = "Bad since, call, limit or follow", body = super::openapi::ErrorBody),
        (status = 404, description = "No such function", body = super::openapi::ErrorBody),
        (status = 429, description = "64 log streams are already open", body = super::openapi::ErrorBody),
    ),
)]
pub async fn logs(
    State(service): State<SharedService>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    service.newest(&name)?;
    let mut query = LogQuery {
        caller: caller.name(),
        ..LogQuery::default()
    };
    let mut follow = false;
    let mut limit = None;
    for (key, value) in &params {
        match key.as_str() {
            "since" => query.since_ms = Some(parse_since(value, now_ms())?),
            "call" => query.call = Some(value.clone()),
            "limit" => {
                limit = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "limit must be a number from 1 to {MAX_LIMIT}, got {value:?}"
                            ))
                        })?,
                )
            }
            "follow" => {
                follow = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "follow must be true or false, got {value:?}"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{other}`: accepted are since, call, limit, follow"
                )));
            }
        }
    }
    // Following replays only what was asked for (`since`, `limit`, `call`); a plain
    // listing shows the newest calls.
    query.limit = match (
        limit,
        follow && query.since_ms.is_none() && query.call.is_none(),
    ) {
        (Some(limit), _) => limit,
        (None, true) => 0,
        (None, false) => DEFAULT_LIMIT,
    };
    let sse = follow
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
    // Subscribed before the backlog is read: a call finishing in between is in one
    // or the other (or both, and then sent once).
    let live = if follow {
        Some(service.call_feed.follow()?)
    } else {
        None
    };
    let backlog = if query.limit == 0 {
        Vec::new()
    } else {
        service.recent_calls(&name, &query).await?
    };

    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let stream = Stream {
        service,
        tx,
        sse,
        name,
        caller,
        call: query.call,
    };
    tokio::spawn(async move {
        let Some((mut feed, _place)) = live else {
            stream.replay(&backlog).await;
            return;
        };
        let Some(seen) = stream.replay(&backlog).await else {
            return;
        };
        if stream.call.is_some() && !seen.is_empty() {
            return; // the one call asked for was sent
        }
        stream.follow(&mut feed, seen).await;
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold events back in their buffers.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One log stream's writer, on its own task.
struct Stream {
    service: SharedService,
    tx: mpsc::Sender<Bytes>,
    sse: bool,
    name: String,
    caller: Caller,
    call: Option<String>,
}

impl Stream {
    /// Sends `chunk`; `false` once the client is gone or has not read for
    /// [`SEND_TIMEOUT`].
    async fn send(&self, chunk: impl Into<Bytes>) -> bool {
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.tx.send(chunk.into())).await,
            Ok(Ok(()))
        )
    }

    async fn send_event(&self, event: &CallEvent) -> bool {
        let data = event_json(event).to_string();
        if self.sse {
            self.send(format!("event: call\nid: {}\ndata: {data}\n\n", event.num))
                .await
        } else {
            self.send(data + "\n").await
        }
    }

    async fn send_error(&self, message: &str) {
        let data = json!({ "error": { "message": message } }).to_string();
        let _ = if self.sse {
            self.send(format!("event: error\ndata: {data}\n\n")).await
        } else {
            self.send(data + "\n").await
        };
    }

    /// Sends the backlog's calls, oldest first, one read at a time (a call's logs
    /// may be megabytes). Returns the numbers sent; `None` if the stream ended.
    async fn replay(&self, backlog: &[i64]) -> Option<HashSet<i64>> {
        let mut seen = HashSet::with_capacity(backlog.len());
        for &num in backlog {
            if self.service.is_stopping() {
                return None;
            }
            match self.service.call_event(num).await {
                Ok(Some(event)) => {
                    if !self.send_event(&event).await {
                        return None;
                    }
                    seen.insert(num);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(function = %self.name, "reading a call's logs: {e:?}");
                    self.send_error("the call records could not be read").await;
                    return None;
                }
            }
        }
        Some(seen)
    }

    fn wants(&self, event: &CallEvent) -> bool {
        event.function == self.name
            && self.caller.may_read(event.caller.as_deref())
            && self
                .call
                .as_ref()
                .is_none_or(|c| *c == event.call_id || *c == event.num.to_string())
    }

    /// Sends each matching call as it finishes, with heartbeats, until the server
    /// shuts down, the client goes away, or the one call asked for was sent.
    async fn follow(
        &self,
        feed: &mut tokio::sync::broadcast::Receiver<Arc<CallEvent>>,
        seen: HashSet<i64>,
    ) {
        let mut stopping = self.service.stopping_signal();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        // The headers go out at once: tell the client the stream is open.
        if !self.send(": connected\n\n").await {
            return;
        }
        loop {
            tokio::select! {
                biased;
                // The guard `wait_for` resolves to is not `Send`: dropped at once.
                () = async { drop(stopping.wait_for(|stopping| *stopping).await) } => return,
                () = self.tx.closed() => return,
                _ = heartbeat.tick() => {
                    if !self.send(": keep-alive\n\n").await {
                        return;
                    }
                }
                received = feed.recv() => match received {
                    Ok(event) => {
                        if !self.wants(&event) || seen.contains(&event.num) {
                            continue;
                        }
                        let event = self.service.complete_event(event).await;
                        if !self.send_event(&event).await || self.call.is_some() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let data = json!({ "missed": missed });
                        if !self.send(format!("event: lagged\ndata: {data}\n\n")).await {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

/// `since`: a duration back from `now_ms` (`10m`, `30s`) or an RFC 3339 time.
pub fn parse_since(text: &str, now_ms: i64) -> ApiResult<i64> {
    if let Ok(ago) = newt_runtime::parse_duration(text) {
        return Ok(now_ms.saturating_sub(ago.as_millis().min(i64::MAX as u128) as i64));
    }
    parse_rfc3339(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "since must be a duration back from now (10m, 2h, 30s) or an RFC 3339 time \
             (2026-12-02T10:00:00Z), got {:?}",
            text.chars().take(80).collect::<String>()
        ))
    })
}

/// Unix milliseconds as RFC 3339 in UTC, with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    format!(
        "{}.{:03}Z",
        crate::client::timestamp(&ms).replace(' ', "T"),
        ms.rem_euclid(1000)
    )
}

/// An RFC 3339 time (`2026-12-02T10:00:00Z`, fractions and `+hh:mm` offsets too) as
/// unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let hours = num(text.len() - 5..text.len() - 3)?;
            let minutes = num(text.len() - 2..text.len())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_rfc3339_times() {
        let now = 1_795_451_405_000;
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_since("2026-11-23T16:30:05Z", now).unwrap(), now);
        assert_eq!(
            parse_since("2026-11-23T16:30:05.25Z", now).unwrap(),
            now + 250
        );
        assert_eq!(parse_since("2026-11-23T17:30:05+01:00", now).unwrap(), now);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-23T16:30:05",
            "-5m",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for ms in [0, 1_795_451_405_123, 951_782_400_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{}", rfc3339(ms));
        }
        assert_eq!(rfc3339(1_795_451_405_123), "2026-11-23T16:30:05.123Z");
    }
}
