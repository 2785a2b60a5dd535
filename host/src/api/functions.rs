//! `/v1/functions`: deploy, list, show, patch, delete and invoke. Each handler parses,
//! calls the service, and answers with a wire type.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use newt_runtime::{CallOutcome, CallResult, Limits, Policy};
use serde_json::{Value, json};
use std::collections::HashMap;

use super::error::{ApiError, ApiResult};
use crate::service::{ConfigChange, DeployRequest, Deployed, SharedService};
use crate::wire::{
    AcceptedView, FunctionDetailView, FunctionList, FunctionView, PolicyPatch, PoolsView,
    RuntimePoolView,
};

/// The runtime of functions deployed without `?runtime=`.
const DEFAULT_RUNTIME: &str = "wasm";

/// Turns a body rejection into our error; the size limit is the common case.
pub(crate) fn body(
    bytes: Result<Bytes, BytesRejection>,
    limit: usize,
    what: &str,
) -> ApiResult<Bytes> {
    bytes.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "the {what} is larger than the limit of {limit} bytes"
            ))
        } else {
            ApiError::BadRequest(format!("could not read the request body: {rejection}"))
        }
    })
}

/// Parses the deploy query: the runtime, limits and policy overrides.
fn deploy_options(query: &HashMap<String, String>, wait: bool) -> ApiResult<DeployRequest> {
    let mut limits = Limits::default();
    let mut runtime = DEFAULT_RUNTIME.to_string();
    let mut policy = serde_json::Map::new();
    for (key, value) in query {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("{key} must be a whole number, got {value:?}"))
            })
        };
        match key.as_str() {
            "runtime" => runtime = value.clone(),
            "timeout_ms" => limits.timeout_ms = number()?,
            "memory_mb" => limits.memory_mb = number()?,
            "max_output_bytes" => limits.max_output_bytes = number()?,
            "max_log_bytes" => limits.max_log_bytes = number()?,
            "min_warm" | "max_instances" | "max_queue" => {
                policy.insert(key.clone(), json!(number()?));
            }
            "preload" | "keep_alive" => {
                policy.insert(key.clone(), json!(value));
            }
            // Read by `deploy_config` and `deploy_route`.
            "allow_outbound" | "route" | "route_methods" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{other}`: accepted are runtime, wait, timeout_ms, \
                     memory_mb, max_output_bytes, max_log_bytes, allow_outbound, route, \
                     route_methods, {}",
                    PolicyPatch::FIELDS.join(", ")
                )));
            }
        }
    }
    limits.validate()?;
    // Check the fields now; the runtime's policy is merged under them later.
    Policy::default().patched(&Value::Object(policy.clone()))?;
    Ok(DeployRequest {
        runtime,
        limits,
        policy: (!policy.is_empty()).then_some(policy),
        wait,
        config: ConfigChange::default(),
    })
}

/// The configuration a deploy brings, beside the bundle: the JSON headers
/// `x-newt-env` and `x-newt-secrets` (objects of strings), `x-newt-unset` and
/// `x-newt-allow-outbound` (arrays of strings), and `allow_outbound` in the query
/// (comma-separated), which wins over its header.
fn deploy_config(headers: &HeaderMap, query: &HashMap<String, String>) -> ApiResult<ConfigChange> {
    fn header<T: serde::de::DeserializeOwned>(
        headers: &HeaderMap,
        name: &str,
        shape: &str,
    ) -> ApiResult<Option<T>> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        value
            .to_str()
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .map(Some)
            // Never the value: it may be a secret.
            .ok_or_else(|| ApiError::BadRequest(format!("{name} must be {shape}")))
    }
    let strings = "a JSON object of strings";
    let list = "a JSON array of strings";
    let mut change = ConfigChange {
        env: header(headers, "x-newt-env", strings)?.unwrap_or_default(),
        secrets: header(headers, "x-newt-secrets", strings)?.unwrap_or_default(),
        unset: header(headers, "x-newt-unset", list)?.unwrap_or_default(),
        allow_outbound: header(headers, "x-newt-allow-outbound", list)?,
    };
    if let Some(text) = query.get("allow_outbound") {
        change.allow_outbound = Some(
            text.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    Ok(change)
}

/// The route a deploy asks for (`route=/api/dice`, with `route_methods=GET,POST` to
/// serve some methods only), checked before anything is deployed.
fn deploy_route(query: &HashMap<String, String>) -> ApiResult<Option<(String, Vec<String>)>> {
    let methods: Vec<String> = query
        .get("route_methods")
        .map(|text| text.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let Some(path) = query.get("route") else {
        if !methods.is_empty() {
            return Err(ApiError::BadRequest(
                "route_methods needs a route: give route=/PATH too".into(),
            ));
        }
        return Ok(None);
    };
    let path = crate::service::routes::normalize_path(path)?;
    let methods = crate::service::routes::normalize_methods(&methods)?;
    Ok(Some((path, methods)))
}

/// The limits and policy of a deploy may also come as JSON objects in the
/// `x-newt-limits` and `x-newt-policy` headers (the body being the bundle); they
/// join the query parameters, which win on conflict.
fn merge_json_headers(headers: &HeaderMap, query: &mut HashMap<String, String>) -> ApiResult<()> {
    for header in ["x-newt-limits", "x-newt-policy"] {
        let Some(value) = headers.get(header) else {
            continue;
        };
        let object: serde_json::Map<String, Value> = value
            .to_str()
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .ok_or_else(|| ApiError::BadRequest(format!("{header} must be a JSON object")))?;
        for (key, value) in object {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            query.entry(key).or_insert(text);
        }
    }
    Ok(())
}

/// The bundle of a deploy request: the raw body, or the `module` field of a
/// `multipart/form-data` body (the seed platform's form).
pub async fn read_bundle(state: &SharedService, request: Request) -> ApiResult<Bytes> {
    if is_multipart(&request) {
        return read_form_bundle(state, request).await;
    }
    let limit = state.config.max_bundle_bytes;
    body(Bytes::from_request(request, state).await, limit, "bundle")
}

fn is_multipart(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// The bundle of a seed deploy: only the `module` field of a `multipart/form-data`
/// body (415 for anything else).
pub async fn read_form_bundle(state: &SharedService, request: Request) -> ApiResult<Bytes> {
    if !is_multipart(&request) {
        return Err(ApiError::UnsupportedMediaType(
            "send the bundle as multipart/form-data, in the field `module` (curl -F \
             module=@bundle.tar.gz); a raw body is accepted by PUT /v1/functions/{name}"
                .into(),
        ));
    }
    let limit = state.config.max_bundle_bytes;
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("unreadable multipart body: {e}")))?;
    let mut module = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        if field.name() == Some("module") {
            module = Some(field.bytes().await.map_err(|e| multipart_error(e, limit))?);
        }
    }
    module.ok_or_else(|| {
        ApiError::BadRequest("the multipart body has no `module` field holding the bundle".into())
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "the bundle is larger than the limit of {limit} bytes"
        ))
    } else {
        ApiError::BadRequest(format!("unreadable multipart body: {e}"))
    }
}

/// `PUT /v1/functions/{name}[?runtime=&wait=&limits...&route=]`: the body is the
/// bundle; `route` also serves the function on that path.
/// A wasm module is compiled before the answer (201 new version, 200 unchanged). A
/// container function answers 202 with status `pending` while its image builds,
/// unless `wait=true`.
#[utoipa::path(
    put,
    path = "/v1/functions/{name}",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name", pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"), super::openapi::DeployQuery, super::openapi::DeployHeaders),
    request_body(description = "The bundle: a .wasm module (or wasi:http component), or a .tar.gz, .tar or .zip for a container runtime", content((super::openapi::Bundle = "application/octet-stream"), (super::openapi::DeployForm = "multipart/form-data"))),
    responses((status = 200, description = "Unchanged: the same bundle and settings as the newest version", body = crate::wire::FunctionView), (status = 201, description = "A new version, serving", body = crate::wire::FunctionView), (status = 202, description = "A container function's new version, `pending` while its image builds", body = crate::wire::FunctionView), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "The route's function or the runtime does not exist", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 409, description = "The route conflicts with another", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the route's limit", body = super::openapi::ErrorBody), (status = 422, description = "Not a bundle newt can run: the message says why", body = super::openapi::ErrorBody), (status = 429, description = "The image builds and their queue are full (see retry-after)", body = super::openapi::ErrorBody), (status = 503, description = "The Docker engine is not reachable (container functions)", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn deploy(
    State(service): State<SharedService>,
    Path(name): Path<String>,
    Query(mut query): Query<HashMap<String, String>>,
    request: Request,
) -> ApiResult<Response> {
    crate::service::validate_name(&name)?;
    let wait = query
        .remove("wait")
        .is_some_and(|v| v == "true" || v == "1" || v.is_empty());
    merge_json_headers(request.headers(), &mut query)?;
    let mut options = deploy_options(&query, wait)?;
    options.config = deploy_config(request.headers(), &query)?;
    let route = deploy_route(&query)?;
    let bundle = read_bundle(&service, request).await?;
    let deployed = service.deploy(&name, options, bundle).await?;
    if let Some((path, methods)) = route {
        service.add_route(&path, &name, &methods).await?;
    }
    Ok((
        deployed_status(&deployed),
        Json(FunctionView::from(deployed.version())),
    )
        .into_response())
}

/// The status a deploy answers with.
pub(crate) fn deployed_status(deployed: &Deployed) -> StatusCode {
    match deployed {
        Deployed::Created(_) => StatusCode::CREATED,
        Deployed::Unchanged(_) => StatusCode::OK,
        Deployed::Accepted(_) => StatusCode::ACCEPTED,
    }
}

/// The configuration fields a `PATCH` body may hold beside the policy fields.
const CONFIG_FIELDS: [&str; 4] = ["env", "secrets", "unset", "allow_outbound"];

/// Takes the configuration fields out of a PATCH body: `env` and `secrets` (objects
/// of strings), `unset` and `allow_outbound` (arrays of strings). `None` when the body
/// has none: a policy change only.
fn config_changes(
    body: &mut Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Option<ConfigChange>> {
    let Ok(Json(Value::Object(fields))) = body else {
        return Ok(None);
    };
    if !CONFIG_FIELDS.iter().any(|k| fields.contains_key(*k)) {
        return Ok(None);
    }
    fn take<T: serde::de::DeserializeOwned + Default>(
        fields: &mut serde_json::Map<String, Value>,
        key: &str,
        shape: &str,
    ) -> ApiResult<Option<T>> {
        match fields.remove(key) {
            None => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                // Never the value: it may be a secret.
                .map_err(|_| ApiError::BadRequest(format!("`{key}` must be {shape}"))),
        }
    }
    let strings = "a JSON object of strings";
    let list = "a JSON array of strings";
    Ok(Some(ConfigChange {
        env: take(fields, "env", strings)?.unwrap_or_default(),
        secrets: take(fields, "secrets", strings)?.unwrap_or_default(),
        unset: take(fields, "unset", list)?.unwrap_or_default(),
        allow_outbound: take(fields, "allow_outbound", list)?,
    }))
}

/// Reads a PATCH body: a JSON object of policy fields.
pub fn policy_changes(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<serde_json::Map<String, Value>> {
    let fields = PolicyPatch::FIELDS.join(", ");
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a JSON object of policy fields ({fields}): {}",
            e.body_text()
        ))
    })?;
    let Value::Object(changes) = body else {
        return Err(ApiError::BadRequest(format!(
            "expected a JSON object of policy fields ({fields})"
        )));
    };
    if let Some(unknown) = changes
        .keys()
        .find(|k| !PolicyPatch::FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown field `{unknown}`: accepted are {fields}, {}",
            CONFIG_FIELDS.join(", ")
        )));
    }
    let patch: PolicyPatch = serde_json::from_value(Value::Object(changes))
        .map_err(|e| ApiError::BadRequest(format!("invalid policy: {e}")))?;
    Ok(patch.into_map())
}

/// `PATCH /v1/functions/{name}`: body is the policy fields to override, which take
/// effect on the running pool at once, and the configuration to change (`env`,
/// `secrets`, `unset`, `allow_outbound`), which makes a new version of the same
/// bundle, serving when this answers.
#[utoipa::path(
    patch,
    path = "/v1/functions/{name}",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name", pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body(content = super::openapi::FunctionPatch, content_type = "application/json"),
    responses((status = 200, description = "The function after the change", body = crate::wire::FunctionDetailView), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 409, description = "The function has no ready version (building, or its build failed)", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the route's limit", body = super::openapi::ErrorBody), (status = 503, description = "The Docker engine is not reachable (container functions)", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn patch(
    State(service): State<SharedService>,
    Path(name): Path<String>,
    mut body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<FunctionDetailView>> {
    // An unknown function is 404 whatever the body says.
    service.newest(&name)?;
    let config = config_changes(&mut body)?;
    let changes = policy_changes(body)?;
    let detail = match config {
        Some(config) => service.change_config(&name, config, changes).await?,
        None => service.patch_policy(&name, changes).await?,
    };
    Ok(Json(FunctionDetailView::from(&detail)))
}

/// `GET /v1/pools`: every function's pool, and every runtime-level pool.
#[utoipa::path(
    get,
    path = "/v1/pools",
    tag = "pools",
    responses((status = 200, description = "Every function's pool and every runtime-level pool", body = crate::wire::PoolsView)),
)]
pub async fn pools(State(service): State<SharedService>) -> Json<PoolsView> {
    let runtime_pools = service
        .registry
        .runtime_policies()
        .into_iter()
        .map(|(runtime, policy)| {
            let stats = service.invoker.runtime_pool(&runtime);
            // wasm's runtime level is the engine and linker: always ready.
            let idle = if runtime == crate::service::WASM_RUNTIME {
                None
            } else {
                Some(stats.as_ref().map_or(0, |s| s.idle))
            };
            RuntimePoolView {
                runtime,
                policy,
                idle,
                stats,
            }
        })
        .collect();
    Json(PoolsView {
        pools: service.invoker.pools(),
        runtime_pools,
    })
}

/// `GET /v1/functions`.
#[utoipa::path(
    get,
    path = "/v1/functions",
    tag = "functions",
    responses((status = 200, description = "Every function's newest version", body = crate::wire::FunctionList)),
)]
pub async fn list(State(service): State<SharedService>) -> Json<FunctionList> {
    Json(FunctionList {
        functions: service
            .registry
            .list()
            .iter()
            .map(FunctionView::from)
            .collect(),
    })
}

/// `GET /v1/functions/{name}`: the current version and the version history.
#[utoipa::path(
    get,
    path = "/v1/functions/{name}",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name", pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 200, description = "The newest version, the policy in force, the pool and the history", body = crate::wire::FunctionDetailView), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody)),
)]
pub async fn show(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionDetailView>> {
    let detail = service.function(&name).await?;
    Ok(Json(FunctionDetailView::from(&detail)))
}

/// `DELETE /v1/functions/{name}`: 204; its call records are kept.
#[utoipa::path(
    delete,
    path = "/v1/functions/{name}",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name", pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 204, description = "Removed; its call records stay"), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn delete(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    service.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/functions/{name}/invoke[?async=true][&version=N|&alias=A]`: the body is
/// the input. `name` may be `FN@3` (version 3) or `FN:prod` (alias `prod`).
#[utoipa::path(
    post,
    path = "/v1/functions/{name}/invoke",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name", pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"), super::openapi::InvokeQuery),
    request_body(description = "The call's input, given to the function as is", content((super::openapi::Bundle = "application/octet-stream"), (serde_json::Value = "application/json"))),
    responses((status = 200, description = "The function's output: JSON when it is JSON, else bytes", content((serde_json::Value = "application/json"), (super::openapi::Bundle = "application/octet-stream")), headers(("x-newt-call-id" = String, description = "The call's id"), ("x-newt-start" = String, description = "cold, prewarmed or warm"), ("server-timing" = String, description = "queue, init and exec in ms"))), (status = 202, description = "Accepted (`async=true`): the call runs in the background", body = crate::wire::AcceptedView), (status = 400, description = "Bad name, parameter, body, limit or policy", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 409, description = "The function has no ready version (building, or its build failed)", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the route's limit", body = super::openapi::ErrorBody), (status = 429, description = "No capacity: instances busy and queue full, or a queued call's deadline passed (see retry-after)", body = super::openapi::ErrorBody), (status = 502, description = "The function ran and failed: error exit, trap, memory or output limit", body = super::openapi::ErrorBody), (status = 503, description = "The Docker engine is not reachable (container functions)", body = super::openapi::ErrorBody), (status = 504, description = "The call ran past its deadline", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn invoke(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<super::auth::Caller>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    input: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let is_async = match query.get("async").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "async must be true or false, got {other:?}"
            )));
        }
    };
    if let Some(other) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "async" | "version" | "alias"))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter `{other}`: accepted are async, version and alias"
        )));
    }
    // `?version=3` and `?alias=prod` say what `FN@3` and `FN:prod` say.
    let name = match (query.get("version"), query.get("alias")) {
        (None, None) => name,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give version or alias, not both".into(),
            ));
        }
        _ if crate::service::split_target(&name)?.is_some() => {
            return Err(ApiError::BadRequest(format!(
                "`{name}` already names a version: drop ?version= / ?alias="
            )));
        }
        (Some(version), None) => format!("{name}@{version}"),
        (None, Some(alias)) => format!("{name}:{alias}"),
    };
    let input = body(input, service.config.max_input_bytes, "input")?;

    if is_async {
        let record = service.invoke_async(&name, input, caller.name()).await?;
        let location = format!("/v1/calls/{}", record.id);
        let mut response = (
            StatusCode::ACCEPTED,
            Json(AcceptedView {
                call_id: record.id.clone(),
                status: record.status,
                url: location.clone(),
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        insert_header(headers, "x-newt-call-id", &record.id);
        insert_header(headers, header::LOCATION.as_str(), &location);
        return Ok(response);
    }

    let invoked = service.invoke(&name, input, caller.name()).await?;
    match invoked.outcome {
        Ok(outcome) => Ok(outcome_response(&invoked.call_id, outcome)),
        Err(e) => {
            let mut response = ApiError::from(e).into_response();
            insert_header(response.headers_mut(), "x-newt-call-id", &invoked.call_id);
            Ok(response)
        }
    }
}

pub(super) fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The response to a finished sync call: the output itself on success, an error
/// otherwise; headers say which call it was and how it started.
fn outcome_response(call_id: &str, outcome: CallOutcome) -> Response {
    let (start, timings) = (outcome.start, outcome.timings);
    let mut response = match outcome.result {
        CallResult::Done => {
            let content_type = crate::service::routes::output_content_type(&outcome.output);
            let mut response = Response::new(Body::from(outcome.output));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        CallResult::Failed(message) => ApiError::FunctionFailed(message).into_response(),
        CallResult::Timeout(message) => ApiError::Timeout(message).into_response(),
    };
    call_headers(response.headers_mut(), call_id, start, timings);
    response
}

/// The headers of every answer to a call that ran: which call it was, how it
/// started, where the time went.
pub(super) fn call_headers(
    headers: &mut HeaderMap,
    call_id: &str,
    start: newt_runtime::StartKind,
    timings: newt_runtime::Timings,
) {
    let t = timings;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let timing = format!(
        "queue;dur={:.3}, init;dur={:.3}, exec;dur={:.3}",
        ms(t.queue),
        ms(t.init),
        ms(t.exec)
    );
    insert_header(headers, "x-newt-call-id", call_id);
    headers.insert("x-newt-start", HeaderValue::from_static(start.as_str()));
    insert_header(headers, "server-timing", &timing);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "dice", "hello-2", "0abc", &"a".repeat(63)] {
            assert!(crate::service::validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "..",
            &"a".repeat(64),
            "é",
        ] {
            assert!(crate::service::validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deploy_options_parse_limits_and_refuse_unknown_keys() {
        let deploy_options = |q: &HashMap<String, String>| super::deploy_options(q, false);
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let options = deploy_options(&q(&[("timeout_ms", "500")])).unwrap();
        assert_eq!(options.runtime, "wasm");
        assert_eq!(options.limits.timeout_ms, 500);
        assert!(options.policy.is_none());
        let options = deploy_options(&q(&[("preload", "none"), ("min_warm", "2")])).unwrap();
        let policy = options.policy.unwrap();
        assert_eq!(policy["preload"], "none");
        assert_eq!(policy["min_warm"], 2);
        assert!(deploy_options(&q(&[("preload", "lukewarm")])).is_err());
        assert!(deploy_options(&q(&[("keep_alive", "forever")])).is_err());
        assert!(deploy_options(&q(&[("timeout_ms", "soon")])).is_err());
        assert!(deploy_options(&q(&[("memory_mb", "999999")])).is_err());
        assert!(deploy_options(&q(&[("colour", "red")])).is_err());
    }
}
