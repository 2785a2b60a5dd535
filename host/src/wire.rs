//! The JSON the API speaks, as types: built by the handlers, read by the CLI. One
//! definition per shape, so server and client cannot drift.

use newt_runtime::{
    ContainerRuntime, Limits, Policy, PoolStats, Preload, RuntimePoolStats, StartKind,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::service::FunctionConfig;
use crate::store::{CallRecord, CallStatus, FunctionVersion, VersionStatus};

/// A function version, as lists and deploys show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionView {
    pub name: String,
    pub version: i64,
    pub runtime: String,
    #[schema(value_type = crate::api::openapi::mirror::VersionStatus)]
    pub status: VersionStatus,
    pub status_message: Option<String>,
    pub digest: String,
    pub size: i64,
    #[schema(value_type = crate::api::openapi::mirror::Limits)]
    pub limits: Limits,
    pub created_at: i64,
    /// The function's variables, with their values.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The names of its secrets: their values are never shown.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Where it may connect (`host:port`); empty: nowhere.
    #[serde(default)]
    pub allow_outbound: Vec<String>,
}

impl From<&FunctionVersion> for FunctionView {
    fn from(v: &FunctionVersion) -> Self {
        let config = FunctionConfig::of(v);
        FunctionView {
            name: v.name.clone(),
            version: v.version,
            runtime: v.runtime.clone(),
            status: v.status,
            status_message: v.status_message.clone(),
            digest: v.digest.clone(),
            size: v.size,
            limits: config.limits,
            created_at: v.created_at,
            env: config.env,
            secrets: v.secrets.names(),
            allow_outbound: config.allow_outbound,
        }
    }
}

/// `GET /v1/functions`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

/// One entry of a function's version history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    pub digest: String,
    pub size: i64,
    #[schema(value_type = crate::api::openapi::mirror::VersionStatus)]
    pub status: VersionStatus,
    pub created_at: i64,
}

/// `GET /v1/functions/{name}`: the newest version, the policy in force, the pool and
/// the history.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FunctionDetailView {
    #[serde(flatten)]
    pub function: FunctionView,
    #[schema(value_type = crate::api::openapi::mirror::Policy)]
    pub policy: Policy,
    /// The policy fields set on the function itself.
    #[schema(value_type = Object)]
    pub policy_overrides: serde_json::Map<String, Value>,
    #[schema(value_type = Option<crate::api::openapi::mirror::PoolStats>)]
    pub pool: Option<PoolStats>,
    pub versions: Vec<VersionView>,
    /// While the newest version is `pending` and its image is building: the step, when
    /// the build began (Unix ms) and the tail of its output (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildView>,
}

/// The progress of a running image build, as `GET /v1/functions/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildView {
    /// What the build is doing: `waiting for a build slot`, `unpacking the bundle`,
    /// `installing requirements`, `build step 1/2: <command>`, ...
    pub step: String,
    /// When the build began, Unix ms.
    pub started_at: i64,
    /// The last 4 KiB of the build's output so far.
    pub log_tail: String,
}

impl From<&crate::service::FunctionDetail> for FunctionDetailView {
    fn from(d: &crate::service::FunctionDetail) -> Self {
        FunctionDetailView {
            function: FunctionView::from(&d.newest),
            policy: d.policy.clone(),
            policy_overrides: d.overrides.clone(),
            pool: d.pool.clone(),
            build: d.build.as_ref().map(|b| BuildView {
                step: b.step.clone(),
                started_at: b.started_at,
                log_tail: b.log_tail.clone(),
            }),
            versions: d
                .versions
                .iter()
                .map(|v| VersionView {
                    version: v.version,
                    digest: v.digest.clone(),
                    size: v.size,
                    status: v.status,
                    created_at: v.created_at,
                })
                .collect(),
        }
    }
}

/// The policy fields a `PATCH` may set; absent fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::api::openapi::mirror::Preload>)]
    pub preload: Option<Preload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_warm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Written like `"60s"`, `"500ms"`, `"5m"` (or a number of seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::api::openapi::mirror::KeepAlive>)]
    pub keep_alive: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
}

impl PolicyPatch {
    /// The field names, for error messages.
    pub const FIELDS: [&'static str; 5] = [
        "preload",
        "min_warm",
        "max_instances",
        "keep_alive",
        "max_queue",
    ];

    /// The fields present, as the JSON object stored as a function's overrides.
    pub fn into_map(self) -> serde_json::Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// Timings of a call, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimingsView {
    pub queue_ms: Option<f64>,
    pub init_ms: Option<f64>,
    pub exec_ms: Option<f64>,
}

/// A call record, as lists show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallView {
    pub id: String,
    pub num: i64,
    pub function: String,
    pub version: i64,
    #[schema(value_type = crate::api::openapi::mirror::CallStatus)]
    pub status: CallStatus,
    #[serde(rename = "async")]
    pub is_async: bool,
    #[schema(value_type = Option<crate::api::openapi::mirror::StartKind>)]
    pub start: Option<StartKind>,
    pub error: Option<String>,
    pub timings: TimingsView,
    pub duration_ms: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Which attempt the call is on: more than 1 for an async call a host restart
    /// interrupted while it ran, and that was started again.
    #[serde(default = "first_attempt")]
    pub attempts: u32,
}

/// The attempt of a call read from a server that does not say.
fn first_attempt() -> u32 {
    1
}

fn micros_to_ms(us: Option<i64>) -> Option<f64> {
    us.map(|us| us as f64 / 1000.0)
}

impl From<&CallRecord> for CallView {
    fn from(call: &CallRecord) -> Self {
        CallView {
            id: call.id.clone(),
            num: call.num,
            function: call.function.clone(),
            version: call.version,
            status: call.status,
            is_async: call.is_async,
            start: call.start,
            error: call.error.clone(),
            timings: TimingsView {
                queue_ms: micros_to_ms(call.queue_us),
                init_ms: micros_to_ms(call.init_us),
                exec_ms: micros_to_ms(call.exec_us),
            },
            duration_ms: match (call.started_at, call.finished_at) {
                (Some(s), Some(f)) => Some(f - s),
                _ => None,
            },
            created_at: call.created_at,
            started_at: call.started_at,
            finished_at: call.finished_at,
            attempts: call.attempts,
        }
    }
}

/// `GET /v1/calls`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CallList {
    pub calls: Vec<CallView>,
}

/// `GET /v1/calls/{id}`: the summary plus input, output and logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallDetailView {
    #[serde(flatten)]
    pub call: CallView,
    pub input: Value,
    pub output: Value,
    pub logs: String,
}

/// Bytes as JSON: the value itself if they are JSON, a string if UTF-8, else a
/// lossy string (binary output is rare for functions and still readable this way).
pub fn bytes_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

impl From<&CallRecord> for CallDetailView {
    fn from(call: &CallRecord) -> Self {
        CallDetailView {
            call: CallView::from(call),
            input: bytes_json(&call.input),
            output: call.output.as_deref().map_or(Value::Null, bytes_json),
            logs: String::from_utf8_lossy(&call.logs).into_owned(),
        }
    }
}

/// The answer to an accepted async call (202).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AcceptedView {
    pub call_id: String,
    #[schema(value_type = crate::api::openapi::mirror::CallStatus)]
    pub status: CallStatus,
    pub url: String,
}

/// A runtime: `wasm`, or a container runtime's definition.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimeView {
    pub name: String,
    pub builtin: bool,
    /// `wasm`, or the container runtime's mode (`agent`, `command`).
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependencies_offline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The Python version the runtime's image provides, for bundles' `newt.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Variables every container of the runtime starts with.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Host paths mounted read-only into its containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::api::openapi::mirror::RuntimeMount>)]
    pub mounts: Vec<newt_runtime::RuntimeMount>,
    /// The policy in force for the runtime.
    #[schema(value_type = crate::api::openapi::mirror::Policy)]
    pub policy: Policy,
}

impl RuntimeView {
    /// The view of a runtime with its policy.
    pub fn new(
        name: &str,
        definition: Option<&ContainerRuntime>,
        builtin: bool,
        policy: Policy,
    ) -> Self {
        let mode = match definition {
            None => "wasm".to_string(),
            Some(r) => serde_json::to_value(r.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        };
        RuntimeView {
            name: name.to_string(),
            builtin,
            mode,
            image: definition.map(|r| r.image.clone()),
            path: definition.map(|r| r.path.clone()),
            dependencies: definition.and_then(|r| r.dependencies.clone()),
            dependencies_offline: definition.and_then(|r| r.dependencies_offline.clone()),
            run: definition.map(|r| r.run.clone()),
            python: definition.and_then(|r| r.python.clone()),
            env: definition.map(|r| r.env.clone()).unwrap_or_default(),
            mounts: definition.map(|r| r.mounts.clone()).unwrap_or_default(),
            policy,
        }
    }
}

/// `GET /v1/runtimes`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimeList {
    pub runtimes: Vec<RuntimeView>,
}

/// A runtime's policy after a `PATCH`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimePolicyView {
    pub name: String,
    #[schema(value_type = crate::api::openapi::mirror::Policy)]
    pub policy: Policy,
}

/// A runtime-level pool: `idle` is `null` for `wasm`, whose runtime level (engine and
/// linker) is always ready.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RuntimePoolView {
    pub runtime: String,
    #[schema(value_type = crate::api::openapi::mirror::Policy)]
    pub policy: Policy,
    pub idle: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::api::openapi::mirror::RuntimePoolStats>)]
    pub stats: Option<RuntimePoolStats>,
}

/// `GET /v1/pools`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolsView {
    #[schema(value_type = Vec<crate::api::openapi::mirror::PoolStats>)]
    pub pools: Vec<PoolStats>,
    pub runtime_pools: Vec<RuntimePoolView>,
}
