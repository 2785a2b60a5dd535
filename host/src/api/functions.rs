//! `/v1/functions`: deploy, list, show, delete and invoke.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use newt_runtime::{CallOutcome, CallResult, FunctionSpec, Limits, Policy};
use serde_json::{Value, json};
use std::collections::HashMap;

use super::error::{ApiError, ApiResult};
use crate::server::{FunctionConfig, SharedState, config_of, spec_of};
use crate::store::{FunctionVersion, VersionStatus};

/// The runtime of functions deployed without `?runtime=`.
const DEFAULT_RUNTIME: &str = "wasm";

/// Checks a function name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(name: &str) -> ApiResult<()> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid function name {:?}: use 1 to 63 characters of a-z, 0-9 and '-', \
             starting with a letter or digit",
            truncate(name, 80)
        )))
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Turns a body rejection into our error; the size limit is the common case.
fn body(bytes: Result<Bytes, BytesRejection>, limit: usize, what: &str) -> ApiResult<Bytes> {
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

/// The version calls of `name` run: the newest ready one. A function whose only
/// versions are building or failed answers 409 with what to do.
pub fn serving(state: &SharedState, name: &str) -> ApiResult<FunctionVersion> {
    validate_name(name)?;
    if let Some(ready) = state.serving.get(name) {
        return Ok(ready.clone());
    }
    let newest = current(state, name)?;
    Err(match newest.status {
        VersionStatus::Pending => ApiError::Conflict(format!(
            "function `{name}` is still being built: retry when GET /v1/functions/{name} \
             says ready"
        )),
        _ => ApiError::Conflict(format!(
            "function `{name}` has no runnable version: its build failed ({}); deploy a fixed \
             bundle",
            newest
                .status_message
                .as_deref()
                .unwrap_or("see GET /v1/functions/{name}")
        )),
    })
}

fn current(state: &SharedState, name: &str) -> ApiResult<FunctionVersion> {
    validate_name(name)?;
    state
        .functions
        .get(name)
        .map(|f| f.clone())
        .ok_or_else(|| ApiError::NotFound(format!("function `{name}` does not exist")))
}

/// The JSON form of a function version.
pub fn function_json(version: &FunctionVersion) -> Value {
    let spec = spec_of(version);
    json!({
        "name": version.name,
        "version": version.version,
        "runtime": version.runtime,
        "status": version.status,
        "status_message": version.status_message,
        "digest": version.digest,
        "size": version.size,
        "limits": spec.limits,
        "created_at": version.created_at,
    })
}

/// Parses the deploy query: the runtime and any limits.
/// What a deploy's query sets.
#[derive(Debug)]
pub struct DeployOptions {
    /// The runtime (default wasm).
    pub runtime: String,
    /// Per-call limits.
    pub limits: Limits,
    /// Policy fields overriding the runtime's; `None` keeps the previous version's.
    pub policy: Option<serde_json::Map<String, Value>>,
}

/// The policy fields a deploy or PATCH may set.
const POLICY_FIELDS: [&str; 5] = [
    "preload",
    "min_warm",
    "max_instances",
    "keep_alive",
    "max_queue",
];

/// Parses the deploy query: the runtime, limits and policy overrides.
fn deploy_options(query: &HashMap<String, String>) -> ApiResult<DeployOptions> {
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
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{other}`: accepted are runtime, wait, timeout_ms, \
                     memory_mb, max_output_bytes, max_log_bytes, {}",
                    POLICY_FIELDS.join(", ")
                )));
            }
        }
    }
    limits.validate()?;
    // Check the fields now; the runtime's policy is merged under them later.
    Policy::default().patched(&Value::Object(policy.clone()))?;
    Ok(DeployOptions {
        runtime,
        limits,
        policy: (!policy.is_empty()).then_some(policy),
    })
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
pub async fn read_bundle(state: &SharedState, request: Request) -> ApiResult<Bytes> {
    let limit = state.config.max_bundle_bytes;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let bundle = if is_multipart {
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
            ApiError::BadRequest(
                "the multipart body has no `module` field holding the bundle".into(),
            )
        })?
    } else {
        body(Bytes::from_request(request, state).await, limit, "bundle")?
    };
    if bundle.is_empty() {
        return Err(ApiError::BadRequest(
            "the bundle is empty: send the .wasm file (or the .tar.gz / .zip for a container \
             runtime) as the body"
                .into(),
        ));
    }
    Ok(bundle)
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

/// `PUT /v1/functions/{name}[?runtime=&wait=&limits...]`: the body is the bundle.
/// A wasm module is compiled before the answer (201 new version, 200 unchanged). A
/// container function answers 202 with status `pending` while its image builds,
/// unless `wait=true`.
pub async fn deploy(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    Query(mut query): Query<HashMap<String, String>>,
    request: Request,
) -> ApiResult<Response> {
    validate_name(&name)?;
    let wait = query
        .remove("wait")
        .is_some_and(|v| v == "true" || v == "1" || v.is_empty());
    merge_json_headers(request.headers(), &mut query)?;
    let options = deploy_options(&query)?;
    let bundle = read_bundle(&state, request).await?;
    let (status, version) = deploy_bundle(&state, &name, options, bundle, wait).await?;
    Ok((status, Json(function_json(&version))).into_response())
}

/// Stores a bundle and makes it the newest version of `name`. Shared by the v1 and
/// seed routes.
pub async fn deploy_bundle(
    state: &SharedState,
    name: &str,
    options: DeployOptions,
    bundle: Bytes,
    wait: bool,
) -> ApiResult<(StatusCode, FunctionVersion)> {
    let DeployOptions {
        runtime,
        limits,
        policy,
    } = options;
    let runtime = runtime.as_str();
    let is_wasm = runtime == DEFAULT_RUNTIME;
    if is_wasm && !bundle.starts_with(b"\0asm") {
        return Err(ApiError::InvalidBundle(
            "the body is not a WebAssembly module (it does not start with \\0asm): send the \
             .wasm file built for wasm32-wasip1"
                .into(),
        ));
    }
    if !is_wasm {
        if state.docker.runtime(runtime).is_none() {
            let known: Vec<String> = state
                .docker
                .runtimes()
                .into_iter()
                .map(|r| r.name)
                .collect();
            return Err(ApiError::BadRequest(format!(
                "unknown runtime `{runtime}`: use wasm or one of: {}",
                known.join(", ")
            )));
        }
        // Refuse what can never build now (422, 503), not after a 202.
        state.docker.check_deploy(runtime, bundle.clone()).await?;
    }

    let cas = state.invoker.cas().clone();
    let size = bundle.len() as i64;
    let digest = tokio::task::spawn_blocking(move || cas.put(&bundle))
        .await
        .map_err(|e| anyhow::anyhow!("storing the bundle: {e}"))??;
    let guard = state.deploy_lock.lock().await;
    let previous = state.functions.get(name).map(|f| f.clone());
    // Without policy parameters a redeploy keeps the function's overrides.
    let policy = match policy {
        Some(policy) => policy,
        None => previous
            .as_ref()
            .map(|v| config_of(v).policy)
            .unwrap_or_default(),
    };
    state
        .runtime_policy(runtime)
        .patched(&Value::Object(policy.clone()))?;
    let wanted = FunctionConfig {
        limits: limits.clone(),
        policy,
    };
    let config = serde_json::to_value(&wanted).map_err(anyhow::Error::from)?;
    if let Some(existing) = previous
        && existing.digest == digest.as_str()
        && existing.runtime == runtime
        && existing.status != VersionStatus::Failed
        && config_of(&existing) == wanted
    {
        return Ok((StatusCode::OK, existing));
    }

    let candidate = FunctionSpec {
        name: name.to_string(),
        version: 0,
        runtime: runtime.to_string(),
        digest: digest.to_string(),
        limits,
    };
    if is_wasm {
        // Compile before recording anything: a module that cannot run never becomes a
        // version.
        state.invoker.validate(&candidate).await?;
    }
    let status = if is_wasm {
        VersionStatus::Ready
    } else {
        VersionStatus::Pending
    };
    let version = state
        .store
        .add_version(name, runtime, digest.as_str(), size, &config, status)
        .await?;
    state.functions.insert(name.to_string(), version.clone());
    if is_wasm {
        state.serving.insert(name.to_string(), version.clone());
    }
    drop(guard);
    tracing::info!(function = %name, version = version.version, %digest, runtime, "deployed");
    if is_wasm {
        state.apply_policy(name);
        return Ok((StatusCode::CREATED, version));
    }
    if wait {
        let built = state.build_version(version).await;
        return match built.status {
            VersionStatus::Ready => Ok((StatusCode::CREATED, built)),
            _ => Err(ApiError::InvalidBundle(
                built
                    .status_message
                    .unwrap_or_else(|| "the build failed".into()),
            )),
        };
    }
    let background = state.clone();
    tokio::spawn(async move { background.build_version(version.clone()).await });
    let pending = state.functions.get(name).map(|f| f.clone());
    Ok((
        StatusCode::ACCEPTED,
        pending.ok_or_else(|| anyhow::anyhow!("function vanished"))?,
    ))
}

/// Reads a PATCH body: a JSON object of policy fields.
pub fn policy_changes(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<serde_json::Map<String, Value>> {
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a JSON object of policy fields ({}): {}",
            POLICY_FIELDS.join(", "),
            e.body_text()
        ))
    })?;
    let Value::Object(changes) = body else {
        return Err(ApiError::BadRequest(format!(
            "expected a JSON object of policy fields ({})",
            POLICY_FIELDS.join(", ")
        )));
    };
    if let Some(unknown) = changes
        .keys()
        .find(|k| !POLICY_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown policy field `{unknown}`: accepted are {}",
            POLICY_FIELDS.join(", ")
        )));
    }
    Ok(changes)
}

/// `PATCH /v1/functions/{name}`: body is the policy fields to override. Takes effect
/// on the running pool at once.
pub async fn patch(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let changes = policy_changes(body)?;
    let guard = state.deploy_lock.lock().await;
    let newest = current(&state, &name)?;
    let mut config = config_of(&newest);
    config.policy.extend(changes);
    state
        .runtime_policy(&newest.runtime)
        .patched(&Value::Object(config.policy.clone()))?;
    let value = serde_json::to_value(&config).map_err(anyhow::Error::from)?;
    // The newest version and the one serving calls (they differ while a build runs).
    let mut targets = vec![newest.clone()];
    if let Some(serving) = state.serving.get(&name).map(|v| v.clone())
        && serving.version != newest.version
    {
        targets.push(serving);
    }
    for mut version in targets {
        state
            .store
            .set_version_config(&name, version.version, &value)
            .await?;
        version.config = value.clone();
        if state
            .functions
            .get(&name)
            .is_some_and(|f| f.version == version.version)
        {
            state.functions.insert(name.clone(), version.clone());
        }
        if state
            .serving
            .get(&name)
            .is_some_and(|f| f.version == version.version)
        {
            state.serving.insert(name.clone(), version);
        }
    }
    drop(guard);
    state.apply_policy(&name);
    show(State(state), Path(name)).await
}

/// `GET /v1/pools`: every function's pool, and every runtime-level pool.
pub async fn pools(State(state): State<SharedState>) -> Json<Value> {
    let stems = state.docker.stem_counts();
    let mut runtime_pools: Vec<Value> = state
        .runtime_policies
        .iter()
        .map(|entry| {
            let name = entry.key();
            // wasm's runtime level is the engine and linker: always ready.
            let idle = if name == crate::server::WASM_RUNTIME {
                Value::Null
            } else {
                json!(stems.get(name).copied().unwrap_or(0))
            };
            json!({ "runtime": name, "policy": entry.value(), "idle": idle })
        })
        .collect();
    runtime_pools.sort_by(|a, b| a["runtime"].as_str().cmp(&b["runtime"].as_str()));
    Json(json!({ "pools": state.invoker.pools(), "runtime_pools": runtime_pools }))
}

/// `GET /v1/functions`.
pub async fn list(State(state): State<SharedState>) -> Json<Value> {
    let mut functions: Vec<FunctionVersion> =
        state.functions.iter().map(|f| f.value().clone()).collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let items: Vec<Value> = functions.iter().map(function_json).collect();
    Json(json!({ "functions": items }))
}

/// `GET /v1/functions/{name}`: the current version and the version history.
pub async fn show(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let function = current(&state, &name)?;
    let versions = state.store.versions(&name).await?;
    let mut body = function_json(&function);
    body["policy"] = json!(state.effective_policy(&function));
    body["policy_overrides"] = Value::Object(config_of(&function).policy);
    body["pool"] = json!(state.invoker.pool(&name));
    body["versions"] = versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "digest": v.digest,
                "size": v.size,
                "status": v.status,
                "created_at": v.created_at,
            })
        })
        .collect();
    Ok(Json(body))
}

/// `DELETE /v1/functions/{name}`: 204; its call records are kept.
pub async fn delete(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    current(&state, &name)?;
    let _guard = state.deploy_lock.lock().await;
    state.store.delete_function(&name).await?;
    state.functions.remove(&name);
    state.serving.remove(&name);
    state.invoker.remove(&name);
    tracing::info!(function = %name, "deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/functions/{name}/invoke[?async=true]`: the body is the input.
pub async fn invoke(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    input: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let function = serving(&state, &name)?;
    let is_async = match query.get("async").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "async must be true or false, got {other:?}"
            )));
        }
    };
    if let Some(other) = query.keys().find(|k| k.as_str() != "async") {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter `{other}`: the only one accepted is async"
        )));
    }
    let input = body(input, state.config.max_input_bytes, "input")?;
    let record = state.new_call(&function, input, is_async);
    let call_id = record.id.clone();

    if is_async {
        if !state.reserve_async() {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "{} async calls are already waiting: retry later",
                    state.config.max_async_backlog
                ),
                retry_after: 1,
            });
        }
        // Durable before the 202: an accepted call survives a crash and runs after
        // the restart.
        if let Err(e) = state.store.record_call_durable(record.clone()).await {
            state.release_async();
            return Err(e.into());
        }
        state.spawn_async(record);
        let location = format!("/v1/calls/{call_id}");
        let mut response = (
            StatusCode::ACCEPTED,
            Json(json!({ "call_id": call_id, "status": "pending", "url": location })),
        )
            .into_response();
        let headers = response.headers_mut();
        insert_header(headers, "x-newt-call-id", &call_id);
        insert_header(headers, header::LOCATION.as_str(), &location);
        return Ok(response);
    }

    let spec = spec_of(&function);
    match state.run_call(record, &spec).await {
        Ok(outcome) => Ok(outcome_response(&call_id, outcome)),
        Err(e) => {
            let mut response = ApiError::from(e).into_response();
            insert_header(response.headers_mut(), "x-newt-call-id", &call_id);
            Ok(response)
        }
    }
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The response to a finished sync call: the output itself on success, an error
/// otherwise; headers say which call it was and how it started.
fn outcome_response(call_id: &str, outcome: CallOutcome) -> Response {
    let mut response = match outcome.result {
        CallResult::Done => {
            let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&outcome.output).is_ok();
            let content_type = if is_json {
                "application/json"
            } else {
                "application/octet-stream"
            };
            let mut response = Response::new(Body::from(outcome.output));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        CallResult::Failed(message) => ApiError::FunctionFailed(message).into_response(),
        CallResult::Timeout(message) => ApiError::Timeout(message).into_response(),
    };
    let t = outcome.timings;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let timing = format!(
        "queue;dur={:.3}, init;dur={:.3}, exec;dur={:.3}",
        ms(t.queue),
        ms(t.init),
        ms(t.exec)
    );
    let headers = response.headers_mut();
    insert_header(headers, "x-newt-call-id", call_id);
    headers.insert(
        "x-newt-start",
        HeaderValue::from_static(outcome.start.as_str()),
    );
    insert_header(headers, "server-timing", &timing);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "dice", "hello-2", "0abc", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
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
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deploy_options_parse_limits_and_refuse_unknown_keys() {
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
