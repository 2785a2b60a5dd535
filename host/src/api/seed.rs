//! The seed platform's routes, served with its bodies and field names (`funcName`,
//! `params`, `callNum`, `status`, `result`) so its curl examples work unchanged.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use newt_runtime::Limits;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::functions::{deployed_status, read_form_bundle};
use crate::service::{DeployRequest, SharedService, validate_name};
use crate::store::{CallFilter, CallRecord, CallStatus};
use crate::wire::bytes_json;

/// `POST /registerFunction/{runtime}/{funcName}`: multipart field `module` holds the
/// bundle (only multipart: anything else is 415). Answers when the function is ready
/// (or its build failed), as the seed did.
pub async fn register_function(
    State(service): State<SharedService>,
    Path((runtime, name)): Path<(String, String)>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    validate_name(&name)?;
    let bundle = read_form_bundle(&service, request).await?;
    let options = DeployRequest {
        runtime,
        limits: Limits::default(),
        policy: None,
        wait: true,
        config: Default::default(),
    };
    let deployed = service.deploy(&name, options, bundle).await?;
    let version = deployed.version();
    Ok((
        deployed_status(&deployed),
        Json(json!({
            "funcName": version.name,
            "runtime": version.runtime,
            "version": version.version,
            "status": version.status,
        })),
    ))
}

/// The seed's invoke body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeBody {
    func_name: String,
    #[serde(default)]
    params: Value,
}

/// `POST /invokeFunction`: `{"funcName", "params"}`; runs the call and answers with
/// its record.
pub async fn invoke_function(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<InvokeBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid invoke body ({}): expected {{\"funcName\": \"...\", \"params\": {{...}}}}",
            e.body_text()
        ))
    })?;
    let input = serde_json::to_vec(&body.params).map_err(anyhow::Error::from)?;
    if input.len() > service.config.max_input_bytes {
        return Err(ApiError::TooLarge(format!(
            "params are larger than the limit of {} bytes",
            service.config.max_input_bytes
        )));
    }
    let invoked = service
        .invoke(&body.func_name, input.into(), caller.name())
        .await?;
    let outcome = invoked.outcome?;
    let status = CallStatus::from(&outcome.result);
    let result = match outcome.result.message() {
        None => bytes_json(&outcome.output),
        Some(message) => Value::String(message.to_string()),
    };
    Ok(Json(json!({
        "callNum": invoked.num,
        "funcName": invoked.function,
        "params": body.params,
        "status": status,
        "result": result,
        "start": outcome.start.as_str(),
    })))
}

fn seed_call(call: &CallRecord) -> Value {
    let result = match (&call.output, &call.error) {
        (_, Some(error)) => Value::String(error.clone()),
        (Some(output), None) => bytes_json(output),
        (None, None) => Value::Null,
    };
    json!({
        "callNum": call.num,
        "funcName": call.function,
        "params": bytes_json(&call.input),
        "status": call.status,
        "result": result,
    })
}

/// `GET /runtimes`.
pub async fn runtimes(State(service): State<SharedService>) -> Json<Value> {
    Json(Value::Array(
        service
            .invoker
            .runtimes()
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect(),
    ))
}

/// `GET /functions`.
pub async fn functions(State(service): State<SharedService>) -> Json<Value> {
    let all: Vec<Value> = service
        .registry
        .list()
        .iter()
        .map(|f| {
            json!({
                "funcName": f.name,
                "runtime": f.runtime,
                "version": f.version,
                "status": f.status,
            })
        })
        .collect();
    Json(Value::Array(all))
}

/// Most calls `GET /calls` lists.
const SEED_CALLS: usize = 1000;
/// Bytes of params and results `GET /calls` returns at most: the seed's list carries
/// every call's payloads, so it stops (newest first) when this much is gathered.
const SEED_CALLS_BYTES: usize = 16 << 20;

/// `GET /calls`: the newest calls (up to 1000, and up to 16 MiB of params and
/// results), the caller's own for an invoke token.
pub async fn calls(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Value>> {
    // Summaries first (small), then each call in full while the budget lasts: the
    // memory this takes is bounded whatever the calls hold.
    let summaries = service
        .store
        .list_calls(CallFilter {
            limit: SEED_CALLS,
            caller: caller.name(),
            ..CallFilter::default()
        })
        .await?;
    let mut calls = Vec::new();
    let mut bytes = 0usize;
    for summary in summaries {
        let Some(call) = service.store.get_call(&summary.id).await? else {
            continue;
        };
        bytes += call.input.len() + call.output.as_ref().map_or(0, Vec::len);
        if bytes > SEED_CALLS_BYTES && !calls.is_empty() {
            break;
        }
        calls.push(seed_call(&call));
    }
    Ok(Json(Value::Array(calls)))
}

/// `GET /call/{callNum}`.
pub async fn call(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(num): Path<String>,
) -> ApiResult<Json<Value>> {
    let num: i64 = num
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{num:?} is not a call number")))?;
    match service.store.get_call_by_num(num).await? {
        // Another caller's call is as unknown as one that does not exist.
        Some(call) if caller.may_read(call.caller.as_deref()) => Ok(Json(seed_call(&call))),
        _ => Err(ApiError::NotFound(format!("call {num} does not exist"))),
    }
}
