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
             \"dependencies\", \"dependencies_offline\", \"run\", \"mode\", \"policy\", \
             \"python\", \"env\", \"mounts\": [{{\"host\", \"container\"}}]}}",
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
#[utoipa::path(
    post,
    path = "/v1/runtimes",
    tag = "runtimes",
    request_body(content = super::openapi::mirror::ContainerRuntime, content_type = "application/json"),
    responses((status = 201, description = "Registered", body = crate::wire::RuntimeView), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 409, description = "A built-in runtime of that name exists", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the route's limit", body = super::openapi::ErrorBody), (status = 422, description = "Invalid runtime: a bad field, or an image not on the engine", body = super::openapi::ErrorBody), (status = 503, description = "The Docker engine is not reachable (container functions)", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn create(
    State(service): State<SharedService>,
    body: Result<Json<ContainerRuntime>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RuntimeView>)> {
    let runtime = service.register_runtime(runtime_body(body)?).await?;
    Ok((StatusCode::CREATED, Json(view(&service, &runtime))))
}

/// `GET /v1/runtimes`: `wasm` and every container runtime.
#[utoipa::path(
    get,
    path = "/v1/runtimes",
    tag = "runtimes",
    responses((status = 200, description = "`wasm` and every container runtime", body = crate::wire::RuntimeList)),
)]
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
#[utoipa::path(
    get,
    path = "/v1/runtimes/{name}",
    tag = "runtimes",
    params(("name" = String, Path, description = "The runtime's name (`wasm` or a container runtime)")),
    responses((status = 200, description = "The runtime", body = crate::wire::RuntimeView), (status = 404, description = "No such runtime", body = super::openapi::ErrorBody)),
)]
pub async fn show(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<Json<RuntimeView>> {
    let runtime = service.runtime(&name)?;
    Ok(Json(view(&service, &runtime)))
}

/// `PATCH /v1/runtimes/{name}`: body is policy fields; the runtime's functions follow
/// at once, except for the fields each overrides.
#[utoipa::path(
    patch,
    path = "/v1/runtimes/{name}",
    tag = "runtimes",
    params(("name" = String, Path, description = "The runtime's name (`wasm` or a container runtime)")),
    request_body(content = crate::wire::PolicyPatch, content_type = "application/json"),
    responses((status = 200, description = "The runtime's policy after the change", body = crate::wire::RuntimePolicyView), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "No such runtime", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the route's limit", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
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
#[utoipa::path(
    delete,
    path = "/v1/runtimes/{name}",
    tag = "runtimes",
    params(("name" = String, Path, description = "The runtime's name (`wasm` or a container runtime)")),
    responses((status = 204, description = "Removed"), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "No such runtime", body = super::openapi::ErrorBody), (status = 409, description = "Built in, or functions use it", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn delete(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    service.delete_runtime(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
