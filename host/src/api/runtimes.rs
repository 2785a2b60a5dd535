//! `/v1/runtimes`: container runtimes (an image and how to run code in it).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use newt_runtime::ContainerRuntime;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use crate::server::{SharedState, WASM_RUNTIME};

/// The JSON form of a runtime.
pub fn runtime_json(runtime: &ContainerRuntime, builtin: bool) -> Value {
    let mut value = serde_json::to_value(runtime).unwrap_or(Value::Null);
    value["builtin"] = json!(builtin);
    value
}

fn is_builtin(name: &str) -> bool {
    name == ContainerRuntime::builtin_python().name
}

/// Registers (or replaces) a runtime after checking its image is on the engine.
pub async fn register(
    state: &SharedState,
    runtime: ContainerRuntime,
) -> ApiResult<ContainerRuntime> {
    runtime.validate()?;
    if is_builtin(&runtime.name) {
        return Err(ApiError::Conflict(format!(
            "`{}` is a built-in runtime and cannot be replaced: register under another name",
            runtime.name
        )));
    }
    state.docker.ensure_runtime_image(&runtime).await?;
    let definition = serde_json::to_value(&runtime).map_err(anyhow::Error::from)?;
    state.store.put_runtime(&runtime.name, &definition).await?;
    state.docker.register_runtime(runtime.clone());
    let policy = runtime.policy.clone().unwrap_or_default();
    state
        .runtime_policies
        .insert(runtime.name.clone(), policy.clone());
    state.docker.set_runtime_policy(&runtime.name, policy);
    tracing::info!(runtime = %runtime.name, image = %runtime.image, "runtime registered");
    Ok(runtime)
}

/// `POST /v1/runtimes`: body is the runtime object.
pub async fn create(
    State(state): State<SharedState>,
    body: Result<Json<ContainerRuntime>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(runtime) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid runtime object ({}): expected {{\"name\", \"image\", \"path\", \
             \"dependencies\", \"run\", \"mode\"}}",
            e.body_text()
        ))
    })?;
    let runtime = register(&state, runtime).await?;
    Ok((StatusCode::CREATED, Json(runtime_json(&runtime, false))))
}

/// `GET /v1/runtimes`: `wasm` and every container runtime.
pub async fn list(State(state): State<SharedState>) -> Json<Value> {
    let mut items = vec![json!({
        "name": WASM_RUNTIME,
        "builtin": true,
        "mode": "wasm",
        "policy": state.runtime_policy(WASM_RUNTIME),
    })];
    items.extend(
        state
            .docker
            .runtimes()
            .iter()
            .map(|r| runtime_json(r, is_builtin(&r.name))),
    );
    Json(json!({ "runtimes": items }))
}

/// `GET /v1/runtimes/{name}`.
pub async fn show(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    state
        .docker
        .runtime(&name)
        .map(|r| Json(runtime_json(&r, is_builtin(&name))))
        .ok_or_else(|| ApiError::NotFound(format!("runtime `{name}` does not exist")))
}

/// `PATCH /v1/runtimes/{name}`: body is policy fields; the runtime's functions follow
/// at once, except for the fields each overrides.
pub async fn patch(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let changes = super::functions::policy_changes(body)?;
    let is_wasm = name == WASM_RUNTIME;
    let runtime = state.docker.runtime(&name);
    if !is_wasm && runtime.is_none() {
        return Err(ApiError::NotFound(format!(
            "runtime `{name}` does not exist"
        )));
    }
    let policy = state
        .runtime_policy(&name)
        .patched(&Value::Object(changes))?;
    let definition = match &runtime {
        Some(runtime) => {
            let mut updated = runtime.clone();
            updated.policy = Some(policy.clone());
            state.docker.register_runtime(updated.clone());
            serde_json::to_value(&updated).map_err(anyhow::Error::from)?
        }
        None => json!({ "name": WASM_RUNTIME, "policy": policy }),
    };
    state.store.put_runtime(&name, &definition).await?;
    state.runtime_policies.insert(name.clone(), policy.clone());
    if !is_wasm {
        state.docker.set_runtime_policy(&name, policy.clone());
    }
    let affected: Vec<String> = state
        .serving
        .iter()
        .filter(|f| f.runtime == name)
        .map(|f| f.name.clone())
        .collect();
    for function in affected {
        state.apply_policy(&function);
    }
    Ok(Json(json!({ "name": name, "policy": policy })))
}

/// `DELETE /v1/runtimes/{name}`: refused while functions use it.
pub async fn delete(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if state.docker.runtime(&name).is_none() {
        return Err(ApiError::NotFound(format!(
            "runtime `{name}` does not exist"
        )));
    }
    if is_builtin(&name) {
        return Err(ApiError::Conflict(format!(
            "`{name}` is built in and cannot be removed"
        )));
    }
    let users: Vec<String> = state
        .functions
        .iter()
        .filter(|f| f.runtime == name)
        .map(|f| f.name.clone())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "runtime `{name}` is used by {}: delete those functions first",
            users.join(", ")
        )));
    }
    state.store.delete_runtime(&name).await?;
    state.docker.remove_runtime(&name);
    Ok(StatusCode::NO_CONTENT)
}
