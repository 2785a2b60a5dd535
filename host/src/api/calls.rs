//! `/v1/calls`: call records.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use std::collections::HashMap;

use super::error::{ApiError, ApiResult};
use crate::server::SharedState;
use crate::store::{CallFilter, CallRecord, CallStatus};

/// Calls listed when no `limit` is given.
const DEFAULT_LIMIT: usize = 50;
/// The most calls one list returns.
const MAX_LIMIT: usize = 1000;

/// Bytes as JSON: the value itself if they are JSON, a string if UTF-8, else a
/// lossy string (binary output is rare for functions and still readable this way).
pub(crate) fn bytes_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn micros_to_ms(us: Option<i64>) -> Value {
    us.map_or(Value::Null, |us| json!(us as f64 / 1000.0))
}

/// The short JSON form of a call, for lists.
fn summary_json(call: &CallRecord) -> Value {
    let duration_ms = match (call.started_at, call.finished_at) {
        (Some(s), Some(f)) => json!(f - s),
        _ => Value::Null,
    };
    json!({
        "id": call.id,
        "num": call.num,
        "function": call.function,
        "version": call.version,
        "status": call.status,
        "async": call.is_async,
        "start": call.start,
        "error": call.error,
        "timings": {
            "queue_ms": micros_to_ms(call.queue_us),
            "init_ms": micros_to_ms(call.init_us),
            "exec_ms": micros_to_ms(call.exec_us),
        },
        "duration_ms": duration_ms,
        "created_at": call.created_at,
        "started_at": call.started_at,
        "finished_at": call.finished_at,
    })
}

/// The full JSON form of a call: the summary plus input, output and logs.
pub fn call_json(call: &CallRecord) -> Value {
    let mut body = summary_json(call);
    body["input"] = bytes_json(&call.input);
    body["output"] = call.output.as_deref().map_or(Value::Null, bytes_json);
    body["logs"] = Value::String(String::from_utf8_lossy(&call.logs).into_owned());
    body
}

/// `GET /v1/calls?function=&status=&limit=&before=`: newest first.
pub async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let mut filter = CallFilter {
        limit: DEFAULT_LIMIT,
        ..CallFilter::default()
    };
    for (key, value) in &query {
        match key.as_str() {
            "function" => {
                super::functions::validate_name(value)?;
                filter.function = Some(value.clone());
            }
            "status" => {
                filter.status = Some(value.parse::<CallStatus>().map_err(ApiError::BadRequest)?)
            }
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}, got {value:?}"
                        ))
                    })?;
            }
            "before" => {
                filter.before_num = Some(value.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!("before must be a call number, got {value:?}"))
                })?);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{other}`: accepted are function, status, limit, before"
                )));
            }
        }
    }
    let calls = state.store.list_calls(filter).await?;
    let items: Vec<Value> = calls.iter().map(summary_json).collect();
    Ok(Json(json!({ "calls": items })))
}

/// `GET /v1/calls/{id}`: `{id}` is the call's UUID (`x-newt-call-id`) or its number
/// (`num`).
pub async fn show(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let found = if uuid::Uuid::parse_str(&id).is_ok() {
        state.store.get_call(&id).await?
    } else if let Ok(num) = id.parse::<i64>() {
        state.store.get_call_by_num(num).await?
    } else {
        return Err(ApiError::BadRequest(format!(
            "{:?} is not a call id: use the UUID from x-newt-call-id or the call number",
            id.chars().take(80).collect::<String>()
        )));
    };
    match found {
        Some(call) => Ok(Json(call_json(&call))),
        None => Err(ApiError::NotFound(format!("call {id} does not exist"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_render_as_json_or_text() {
        assert_eq!(bytes_json(b"[1,2]"), json!([1, 2]));
        assert_eq!(bytes_json(b"plain text"), json!("plain text"));
        assert_eq!(bytes_json(b""), json!(""));
    }
}
