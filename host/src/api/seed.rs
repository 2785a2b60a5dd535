//! The seed platform's routes, served with its bodies and field names (`funcName`,
//! `params`, `callNum`, `status`, `result`) so its curl examples work unchanged.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use newt_runtime::Limits;
use serde::Deserialize;
use serde_json::{Value, json};

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
    let invoked = service.invoke(&body.func_name, input.into()).await?;
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

/// `GET /calls`: the newest 1000 calls.
pub async fn calls(State(service): State<SharedService>) -> ApiResult<Json<Value>> {
    let calls = service
        .store
        .list_calls(CallFilter {
            limit: 1000,
            with_payloads: true,
            ..CallFilter::default()
        })
        .await?;
    Ok(Json(Value::Array(calls.iter().map(seed_call).collect())))
}

/// `GET /call/{callNum}`.
pub async fn call(
    State(service): State<SharedService>,
    Path(num): Path<String>,
) -> ApiResult<Json<Value>> {
    let num: i64 = num
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{num:?} is not a call number")))?;
    match service.store.get_call_by_num(num).await? {
        Some(call) => Ok(Json(seed_call(&call))),
        None => Err(ApiError::NotFound(format!("call {num} does not exist"))),
    }
}
