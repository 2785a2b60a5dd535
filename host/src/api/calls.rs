//! `/v1/calls`: call records.

use axum::Json;
use axum::extract::{Path, Query, State};
use std::collections::HashMap;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::service::SharedService;
use crate::store::{CallFilter, CallStatus};
use crate::wire::{CallDetailView, CallList, CallView};

/// Calls listed when no `limit` is given.
const DEFAULT_LIMIT: usize = 50;
/// The most calls one list returns.
const MAX_LIMIT: usize = 1000;

/// `GET /v1/calls?function=&status=&limit=&before=`: newest first.
#[utoipa::path(
    get,
    path = "/v1/calls",
    tag = "calls",
    params(super::openapi::CallsQuery),
    responses((status = 200, description = "Call records, newest first (an invoke token sees its own)", body = crate::wire::CallList), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody)),
)]
pub async fn list(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<CallList>> {
    let mut filter = CallFilter {
        limit: DEFAULT_LIMIT,
        ..CallFilter::default()
    };
    for (key, value) in &query {
        match key.as_str() {
            "function" => {
                crate::service::validate_name(value)?;
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
    // An invoke token lists only the calls it made.
    filter.caller = caller.name();
    let calls = service.store.list_calls(filter).await?;
    Ok(Json(CallList {
        calls: calls.iter().map(CallView::from).collect(),
    }))
}

/// `GET /v1/calls/{id}`: `{id}` is the call's UUID (`x-newt-call-id`) or its number
/// (`num`).
#[utoipa::path(
    get,
    path = "/v1/calls/{id}",
    tag = "calls",
    params(("id" = String, Path, description = "The call's UUID (x-newt-call-id) or its number")),
    responses((status = 200, description = "The call with its input, output and logs", body = crate::wire::CallDetailView), (status = 400, description = "Neither a UUID nor a call number", body = super::openapi::ErrorBody), (status = 404, description = "No such call (or another caller's)", body = super::openapi::ErrorBody)),
)]
pub async fn show(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<CallDetailView>> {
    let found = if uuid::Uuid::parse_str(&id).is_ok() {
        service.store.get_call(&id).await?
    } else if let Ok(num) = id.parse::<i64>() {
        service.store.get_call_by_num(num).await?
    } else {
        return Err(ApiError::BadRequest(format!(
            "{:?} is not a call id: use the UUID from x-newt-call-id or the call number",
            id.chars().take(80).collect::<String>()
        )));
    };
    match found {
        // Another caller's call is as unknown as one that does not exist.
        Some(call) if caller.may_read(call.caller.as_deref()) => {
            Ok(Json(CallDetailView::from(&call)))
        }
        _ => Err(ApiError::NotFound(format!("call {id} does not exist"))),
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::bytes_json;
    use serde_json::json;

    #[test]
    fn bytes_render_as_json_or_text() {
        assert_eq!(bytes_json(b"[1,2]"), json!([1, 2]));
        assert_eq!(bytes_json(b"plain text"), json!("plain text"));
        assert_eq!(bytes_json(b""), json!(""));
    }
}
