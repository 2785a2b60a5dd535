//! The seed platform's routes, served in its own shapes so its curl examples work
//! verbatim: a runtime object without a name (its image names it), lists of names,
//! calls keyed `"c1"`, `"c2"`, … and call objects `{"funcName", "params", "callNum",
//! "status", "result"}` with the seed's `PENDING` / `DONE` / `ERROR` and a string
//! result. `POST /invokeFunction` is asynchronous like the seed's: it answers `202`
//! with the call number and runs the call in the background (newt's durable async
//! path); `GET /call/{n}?wait=SECONDS` waits for it. newt's richer answers stay on
//! `/v1`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use newt_runtime::{ContainerRuntime, Limits};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::functions::{deployed_status, insert_header, read_form_bundle};
use crate::service::{DeployRequest, SharedService, validate_name};
use crate::store::{CallFilter, CallRecord, CallStatus};
use crate::wire::{RuntimeView, bytes_json};

/// The longest runtime name newt takes (see `ContainerRuntime::validate`).
const MAX_RUNTIME_NAME: usize = 63;

/// The runtime name the seed's runtime object gets from its image, as the seed named a
/// runtime by its image: the reference's last path component, then `-TAG` when a tag
/// other than `latest` is given, then `-` and the first 12 hex digits of a digest;
/// lowercased, every run of other characters than `a-z`, `0-9` made one `-`, no `-`
/// at either end, at most 63 characters. `pythonruntime` → `pythonruntime`,
/// `reg/x:tag` → `x-tag`, `registry.example.com:5000/team/app:1.2` → `app-1-2`.
/// `None` when nothing is left (the caller must then give a `name`).
pub(crate) fn runtime_name_of_image(image: &str) -> Option<String> {
    let (reference, digest) = match image.split_once('@') {
        Some((reference, digest)) => (reference, Some(digest)),
        None => (image, None),
    };
    // The last path component: a ':' before the last '/' is a registry's port.
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let (repository, tag) = match last.split_once(':') {
        Some((repository, tag)) => (repository, Some(tag)),
        None => (last, None),
    };
    let mut raw = repository.to_string();
    if let Some(tag) = tag.filter(|t| !t.is_empty() && *t != "latest") {
        raw.push('-');
        raw.push_str(tag);
    }
    if let Some(digest) = digest {
        let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
        raw.push('-');
        raw.extend(hex.chars().take(12));
    }
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    name.truncate(MAX_RUNTIME_NAME);
    let name = name.trim_end_matches('-');
    (!name.is_empty()).then(|| name.to_string())
}

/// The seed's runtime object as newt's: a missing `name` is derived from the image.
fn seed_runtime(body: Result<Json<Value>, JsonRejection>) -> ApiResult<ContainerRuntime> {
    const EXPECTED: &str = "expected {\"image\", \"path\", \"dependencies\", \"run\"} \
                            (and optionally \"name\", \"mode\", \"policy\")";
    let Json(mut body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid runtime object ({}): {EXPECTED}",
            e.body_text()
        ))
    })?;
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "invalid runtime object (not a JSON object): {EXPECTED}"
        )));
    };
    if !object.contains_key("name") {
        let Some(image) = object.get("image").and_then(Value::as_str) else {
            return Err(ApiError::BadRequest(format!(
                "invalid runtime object: `image` is missing or not a string, and without a \
                 `name` the runtime is named after its image: {EXPECTED}"
            )));
        };
        let name = runtime_name_of_image(image).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "no runtime name can be made from image {:?}: give a `name` \
                 (1 to 63 characters of a-z, 0-9 and '-')",
                image.chars().take(80).collect::<String>()
            ))
        })?;
        object.insert("name".into(), Value::String(name));
    }
    serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid runtime object ({e}): {EXPECTED}")))
}

/// `POST /registerRuntime`: the seed's runtime object, `name` optional (the image
/// names the runtime, see [`runtime_name_of_image`]). The image must be on the Docker
/// engine: a missing one is refused here, `422`, saying to build or load it.
pub async fn register_runtime(
    State(service): State<SharedService>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RuntimeView>)> {
    let runtime = seed_runtime(body)?;
    super::runtimes::create(State(service), Ok(Json(runtime))).await
}

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

/// `POST /invokeFunction`: `{"funcName", "params"}`. Asynchronous, as the seed's: the
/// call is recorded durably, answered `202 {"callNum": N}` (with `Location:
/// /call/N`), then run in the background; `GET /call/N` shows it `PENDING`, then
/// `DONE` or `ERROR`.
pub async fn invoke_function(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<InvokeBody>, JsonRejection>,
) -> ApiResult<Response> {
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
    let record = service
        .invoke_async(&body.func_name, input.into(), caller.name())
        .await?;
    let mut response =
        (StatusCode::ACCEPTED, Json(json!({ "callNum": record.num }))).into_response();
    let headers = response.headers_mut();
    insert_header(headers, "x-newt-call-id", &record.id);
    insert_header(
        headers,
        header::LOCATION.as_str(),
        &format!("/call/{}", record.num),
    );
    Ok(response)
}

/// The seed's call status: newt's six in three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum SeedStatus {
    /// Accepted or running.
    Pending,
    /// Finished with output.
    Done,
    /// Failed, timed out or cancelled.
    Error,
}

impl From<CallStatus> for SeedStatus {
    fn from(status: CallStatus) -> Self {
        match status {
            CallStatus::Pending | CallStatus::Running => SeedStatus::Pending,
            CallStatus::Done => SeedStatus::Done,
            CallStatus::Failed | CallStatus::Timeout | CallStatus::Cancelled => SeedStatus::Error,
        }
    }
}

/// The seed's call object, its fields in the seed's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SeedCall {
    func_name: String,
    params: Value,
    call_num: i64,
    status: SeedStatus,
    /// `DONE`: the function's output as text; `ERROR`: what went wrong; `PENDING`:
    /// empty.
    result: String,
}

impl From<&CallRecord> for SeedCall {
    fn from(call: &CallRecord) -> Self {
        let status = SeedStatus::from(call.status);
        let result = match status {
            SeedStatus::Pending => String::new(),
            SeedStatus::Done => call
                .output
                .as_deref()
                .map(|output| String::from_utf8_lossy(output).into_owned())
                .unwrap_or_default(),
            SeedStatus::Error => call
                .error
                .clone()
                .unwrap_or_else(|| format!("the call ended {}", call.status.as_str())),
        };
        SeedCall {
            func_name: call.function.clone(),
            params: bytes_json(&call.input),
            call_num: call.num,
            status,
            result,
        }
    }
}

/// `GET /calls`' object: `"c<callNum>"` keys in call-number order (a JSON map type
/// would sort `c10` before `c2`).
struct SeedCalls(Vec<SeedCall>);

impl Serialize for SeedCalls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|call| (format!("c{}", call.call_num), call)),
        )
    }
}

/// `GET /runtimes`: the names of every runtime a function can be registered with:
/// newt's built-in `wasm` and `python`, then the registered ones.
pub async fn runtimes(State(service): State<SharedService>) -> Json<Vec<String>> {
    Json(
        service
            .runtimes()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect(),
    )
}

/// `GET /functions`: the names of the functions.
pub async fn functions(State(service): State<SharedService>) -> Json<Vec<String>> {
    Json(
        service
            .registry
            .list()
            .iter()
            .map(|f| f.name.clone())
            .collect(),
    )
}

/// Most calls `GET /calls` lists.
const SEED_CALLS: usize = 1000;
/// Bytes of params and results `GET /calls` returns at most: the seed's list carries
/// every call's payloads, so it stops (newest first) when this much is gathered.
const SEED_CALLS_BYTES: usize = 16 << 20;

/// `GET /calls`: `{"c1": call, "c2": call, …}` of the newest calls (up to 1000, and up
/// to 16 MiB of params and results), the caller's own for an invoke token.
pub async fn calls(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Response> {
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
        bytes += call.input.len()
            + call.output.as_ref().map_or(0, Vec::len)
            + call.error.as_ref().map_or(0, String::len);
        if bytes > SEED_CALLS_BYTES && !calls.is_empty() {
            break;
        }
        calls.push(SeedCall::from(&call));
    }
    // Newest first from the store; the seed's object reads oldest first.
    calls.reverse();
    Ok(Json(SeedCalls(calls)).into_response())
}

/// The longest `GET /call/{n}?wait=` accepted, in seconds: long enough for most calls,
/// short enough that a waiting client holds a connection for a bounded time (it asks
/// again for a longer call).
const MAX_CALL_WAIT_SECS: u64 = 60;
/// The first and the longest pause between two looks at a waited-for call.
const CALL_POLL_FIRST: Duration = Duration::from_millis(20);
const CALL_POLL_MAX: Duration = Duration::from_millis(250);

/// `GET /call/{callNum}[?wait=SECONDS]`: the seed's call object. With `wait`, answers
/// as soon as the call is no longer `PENDING`, or after that many seconds (at most 60)
/// with the call as it then is.
pub async fn call(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(num): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let num: i64 = num.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "{:?} is not a call number",
            num.chars().take(80).collect::<String>()
        ))
    })?;
    let mut wait = Duration::ZERO;
    for (key, value) in &query {
        match key.as_str() {
            "wait" => {
                let secs = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s <= MAX_CALL_WAIT_SECS)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "wait must be a number of seconds from 0 to {MAX_CALL_WAIT_SECS}, \
                             got {:?}",
                            value.chars().take(80).collect::<String>()
                        ))
                    })?;
                wait = Duration::from_secs(secs);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{}`: the only one accepted is wait",
                    other.chars().take(80).collect::<String>()
                )));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = CALL_POLL_FIRST;
    loop {
        let call = match service.store.get_call_by_num(num).await? {
            // Another caller's call is as unknown as one that does not exist.
            Some(call) if caller.may_read(call.caller.as_deref()) => SeedCall::from(&call),
            _ => return Err(ApiError::NotFound(format!("call {num} does not exist"))),
        };
        // The store has no completion signal to wait on (an async call's outcome is
        // a write like any other), so a waiting client is answered by looking again,
        // less often as the call goes on.
        let now = tokio::time::Instant::now();
        if call.status != SeedStatus::Pending || now >= deadline || service.is_stopping() {
            return Ok(Json(
                serde_json::to_value(&call).map_err(anyhow::Error::from)?,
            ));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(CALL_POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_come_from_the_image() {
        for (image, name) in [
            ("pythonruntime", "pythonruntime"),
            ("reg/x:tag", "x-tag"),
            ("registry.example.com:5000/team/app:1.2", "app-1-2"),
            ("python:3.12-slim", "python-3-12-slim"),
            ("app:latest", "app"),
            ("newt/python:3", "python-3"),
            ("My_Image", "my-image"),
            (
                "x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "x-0123456789ab",
            ),
            ("reg:5000/x", "x"),
        ] {
            assert_eq!(
                runtime_name_of_image(image).as_deref(),
                Some(name),
                "{image}"
            );
        }
        let long = format!("{}-:x", "a".repeat(62));
        assert_eq!(runtime_name_of_image(&long), Some("a".repeat(62)));
        for nothing in ["", "/", "reg/", "___", "-:latest"] {
            assert_eq!(runtime_name_of_image(nothing), None, "{nothing:?}");
        }
    }

    #[test]
    fn a_runtime_object_without_a_name_is_named_after_its_image() {
        let seed = json!({"image": "pythonruntime", "path": "/ws",
            "dependencies": "pip3 install -r requirements.txt", "run": "python3 test.py"});
        let runtime = seed_runtime(Ok(Json(seed))).unwrap();
        assert_eq!(runtime.name, "pythonruntime");
        assert_eq!(runtime.path, "/ws");
        assert_eq!(runtime.mode, newt_runtime::RunMode::Command);

        let named = json!({"name": "py", "image": "pythonruntime", "run": "python3 t.py"});
        assert_eq!(seed_runtime(Ok(Json(named))).unwrap().name, "py");

        for (body, says) in [
            (json!({"run": "x"}), "`image` is missing"),
            (json!({"image": "___", "run": "x"}), "give a `name`"),
            (json!(["pythonruntime"]), "not a JSON object"),
            (json!({"image": "x"}), "missing field `run`"),
            (
                json!({"image": "x", "run": "y", "extra": 1}),
                "unknown field `extra`",
            ),
        ] {
            match seed_runtime(Ok(Json(body.clone()))) {
                Err(ApiError::BadRequest(message)) => {
                    assert!(message.contains(says), "{body}: {message}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    fn record(status: CallStatus, output: Option<&[u8]>, error: Option<&str>) -> CallRecord {
        CallRecord {
            id: "0".into(),
            num: 7,
            function: "dice".into(),
            version: 1,
            status,
            is_async: true,
            input: br#"{"roll":"4d6"}"#.to_vec(),
            output: output.map(<[u8]>::to_vec),
            error: error.map(str::to_string),
            logs: Vec::new(),
            start: None,
            queue_us: None,
            init_us: None,
            exec_us: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            caller: None,
            attempts: 1,
        }
    }

    #[test]
    fn calls_take_the_seeds_shape() {
        let done = SeedCall::from(&record(CallStatus::Done, Some(b"3 1 6 2\n"), None));
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"funcName":"dice","params":{"roll":"4d6"},"callNum":7,"status":"DONE","result":"3 1 6 2\n"}"#
        );
        for status in [CallStatus::Pending, CallStatus::Running] {
            let pending =
                serde_json::to_value(SeedCall::from(&record(status, None, None))).unwrap();
            assert_eq!(pending["status"], "PENDING");
            assert_eq!(pending["result"], "");
        }
        for status in [
            CallStatus::Failed,
            CallStatus::Timeout,
            CallStatus::Cancelled,
        ] {
            let failed = SeedCall::from(&record(status, Some(b""), Some("exited with code 3")));
            let failed = serde_json::to_value(failed).unwrap();
            assert_eq!(failed["status"], "ERROR", "{status:?}");
            assert_eq!(failed["result"], "exited with code 3");
        }
        // A JSON output stays text: the seed's result is a string.
        let json_output = SeedCall::from(&record(CallStatus::Done, Some(b"[1,2]"), None));
        assert_eq!(
            serde_json::to_value(json_output).unwrap()["result"],
            "[1,2]"
        );
    }

    #[test]
    fn the_call_list_is_keyed_by_number_in_order() {
        let calls = SeedCalls(
            [2, 10, 11]
                .into_iter()
                .map(|num| {
                    let mut call = record(CallStatus::Done, Some(b"x"), None);
                    call.num = num;
                    SeedCall::from(&call)
                })
                .collect(),
        );
        let text = serde_json::to_string(&calls).unwrap();
        let keys: Vec<usize> = ["\"c2\"", "\"c10\"", "\"c11\""]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap()["c10"]["callNum"],
            10
        );
    }
}
