//! The seed platform's routes, served with its bodies and field names (`funcName`,
//! `params`, `callNum`, `status`, `result`) so its curl examples work unchanged.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use newt_runtime::{CallResult, Limits};
use serde::Deserialize;
use serde_json::{Value, json};

use super::calls::bytes_json;
use super::error::{ApiError, ApiResult};
use super::functions::{DeployOptions, deploy_bundle, read_bundle, serving, validate_name};
use crate::server::{SharedState, spec_of};
use crate::store::{CallFilter, CallRecord};

/// `POST /registerFunction/{runtime}/{funcName}`: multipart field `module` holds the
/// bundle. Answers when the function is ready (or its build failed), as the seed did.
pub async fn register_function(
    State(state): State<SharedState>,
    Path((runtime, name)): Path<(String, String)>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    validate_name(&name)?;
    let bundle = read_bundle(&state, request).await?;
    let options = DeployOptions {
        runtime,
        limits: Limits::default(),
        policy: None,
    };
    let (status, version) = deploy_bundle(&state, &name, options, bundle, true).await?;
    Ok((
        status,
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
    State(state): State<SharedState>,
    body: Result<Json<InvokeBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid invoke body ({}): expected {{\"funcName\": \"...\", \"params\": {{...}}}}",
            e.body_text()
        ))
    })?;
    let function = serving(&state, &body.func_name)?;
    let input = serde_json::to_vec(&body.params).map_err(anyhow::Error::from)?;
    if input.len() > state.config.max_input_bytes {
        return Err(ApiError::TooLarge(format!(
            "params are larger than the limit of {} bytes",
            state.config.max_input_bytes
        )));
    }
    let record = state.new_call(&function, input.into(), false);
    let num = record.num;
    let params = body.params.clone();
    let outcome = state.run_call(record, &spec_of(&function)).await?;
    let (status, result) = match outcome.result {
        CallResult::Done => ("done", bytes_json(&outcome.output)),
        CallResult::Failed(message) => ("failed", Value::String(message)),
        CallResult::Timeout(message) => ("timeout", Value::String(message)),
    };
    Ok(Json(json!({
        "callNum": num,
        "funcName": function.name,
        "params": params,
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
pub async fn runtimes(State(state): State<SharedState>) -> Json<Value> {
    Json(Value::Array(
        state
            .docker
            .runtimes()
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect(),
    ))
}

/// `GET /functions`.
pub async fn functions(State(state): State<SharedState>) -> Json<Value> {
    let mut all: Vec<Value> = state
        .functions
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
    all.sort_by(|a, b| a["funcName"].as_str().cmp(&b["funcName"].as_str()));
    Json(Value::Array(all))
}

/// `GET /calls`: the newest 1000 calls.
pub async fn calls(State(state): State<SharedState>) -> ApiResult<Json<Value>> {
    let calls = state
        .store
        .list_calls(CallFilter {
            limit: 1000,
            ..CallFilter::default()
        })
        .await?;
    Ok(Json(Value::Array(calls.iter().map(seed_call).collect())))
}

/// `GET /call/{callNum}`.
pub async fn call(
    State(state): State<SharedState>,
    Path(num): Path<String>,
) -> ApiResult<Json<Value>> {
    let num: i64 = num
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{num:?} is not a call number")))?;
    match state.store.get_call_by_num(num).await? {
        Some(call) => Ok(Json(seed_call(&call))),
        None => Err(ApiError::NotFound(format!("call {num} does not exist"))),
    }
}
