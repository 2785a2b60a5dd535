//! `/v1/runtimes`: container runtimes (an image and how to run code in it), and the
//! policy of every runtime, `wasm` included.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use newt_runtime::ContainerRuntime;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use crate::service::SharedService;
use crate::wire::{RuntimeList, RuntimePolicyView, RuntimeView};

/// Parses a runtime object from a request body.
pub(crate) fn runtime_body(
    body: Result<Json<ContainerRuntime>, JsonRejection>,
) -> ApiResult<ContainerRuntime> {
    let Json(runtime) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid runtime object ({}): expected {{\"name\", \"image\", \"path\", \
             \"dependencies\", \"run\", \"mode\"}}",
            e.body_text()
        ))
    })?;
    Ok(runtime)
}

fn view(service: &SharedService, runtime: &ContainerRuntime) -> RuntimeView {
    RuntimeView::new(
        &runtime.name,
        Some(runtime),
        service.is_builtin_runtime(&runtime.name),
        service.registry.runtime_policy(&runtime.name),
    )
}

/// `POST /v1/runtimes`: body is the runtime object.
pub async fn create(
    State(service): State<SharedService>,
    body: Result<Json<ContainerRuntime>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RuntimeView>)> {
    let runtime = service.register_runtime(runtime_body(body)?).await?;
    Ok((StatusCode::CREATED, Json(view(&service, &runtime))))
}

/// `GET /v1/runtimes`: `wasm` and every container runtime.
pub async fn list(State(service): State<SharedService>) -> Json<RuntimeList> {
    let runtimes = service
        .runtimes()
        .into_iter()
        .map(|(name, definition, policy)| {
            let builtin = service.is_builtin_runtime(&name);
            RuntimeView::new(&name, definition.as_ref(), builtin, policy)
        })
        .collect();
    Json(RuntimeList { runtimes })
}

/// `GET /v1/runtimes/{name}`.
pub async fn show(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<Json<RuntimeView>> {
    let runtime = service.runtime(&name)?;
    Ok(Json(view(&service, &runtime)))
}

/// `PATCH /v1/runtimes/{name}`: body is policy fields; the runtime's functions follow
/// at once, except for the fields each overrides.
pub async fn patch(
    State(service): State<SharedService>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<RuntimePolicyView>> {
    if name != crate::service::WASM_RUNTIME {
        service.runtime(&name)?;
    }
    let changes = super::functions::policy_changes(body)?;
    let policy = service.patch_runtime_policy(&name, changes).await?;
    Ok(Json(RuntimePolicyView { name, policy }))
}

/// `DELETE /v1/runtimes/{name}`: refused while functions use it.
pub async fn delete(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    service.delete_runtime(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
