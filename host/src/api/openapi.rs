//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the v1 API, generated from the
//! code.
//!
//! Each handler carries its own `#[utoipa::path]` (method, path, parameters, body,
//! every status it can answer); the wire types derive `ToSchema`. [`ApiDoc`] is the
//! one place that lists the documented operations: a route added to the router and
//! not listed here fails `every_route_the_router_serves_is_documented`.
//!
//! The engine's types (`newt_runtime`) and the store's know nothing of HTTP, so their
//! JSON shapes are described by the mirrors in [`mirror`], each checked against the
//! real type's serialization by a test here.
//!
//! The document is served without a token: it says what the API accepts, which the
//! README says too, and nothing about this server's functions or state. The seed
//! platform's routes (`/registerRuntime`, ...) and `ANY /fn/{name}/...` (a function's
//! own HTTP, opaque to newt) are left out: the document describes newt's own API.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// The name of the bearer-token security scheme in the document.
const TOKEN_SCHEME: &str = "token";

/// The v1 API, as one document: every operation, its schemas and the token scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "newt",
        description = "newt's HTTP API: deploy functions (wasm modules, container bundles), \
                       invoke them, read their calls, manage runtimes, pools and routes. \
                       Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::functions::list,
        super::functions::deploy,
        super::functions::show,
        super::functions::patch,
        super::functions::delete,
        super::functions::invoke,
        super::functions::pools,
        super::calls::list,
        super::calls::show,
        super::runtimes::list,
        super::runtimes::create,
        super::runtimes::show,
        super::runtimes::patch,
        super::runtimes::delete,
        super::routes::list,
        super::routes::add,
        super::routes::remove,
        super::healthz,
        super::metrics,
        super::gc::collect,
        super::gc::status,
        super::versions::list,
        super::versions::aliases,
        super::versions::set_alias,
        super::versions::delete_alias,
        super::versions::rollback,
        super::logs::logs,
        serve,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&GuardResponses),
    security(("token" = [])),
)]
pub struct ApiDoc;

/// The document, built once per process (it never changes while newt runs).
pub fn document() -> &'static Document {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    DOCUMENT.get_or_init(ApiDoc::openapi)
}

/// `GET /v1/openapi.json`: the OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of the v1 API", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let text = JSON.get_or_init(|| {
        document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes (checked by a test)")
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text.as_str(),
    )
        .into_response()
}

/// Every error's body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: `code` is stable for scripts, `message` says what to fix.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `request_timeout`,
    /// `conflict`, `too_large`, `unsupported_media_type`, `misdirected_request`,
    /// `invalid_bundle`, `at_capacity`, `function_failed`, `unavailable`, `timeout`,
    /// `insufficient_storage`, `internal`.
    pub code: String,
    pub message: String,
}

/// The responses every operation can give before its handler runs, added to each
/// operation here rather than repeated on every handler: the request guards (`Host`,
/// `Origin`), the token check, and an internal error (a bug or an I/O failure, with
/// a reference to the log).
struct GuardResponses;

impl Modify for GuardResponses {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TOKEN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`--token` (admin) or an `--invoke-token` (invoke and read its own \
                         calls); not needed when the server has no token",
                    ))
                    .build(),
            ),
        );
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let open = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| *r == Default::default()));
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                };
                if !open {
                    add(
                        "401",
                        "A token is configured and the request carries none, or a wrong one",
                    );
                }
                add(
                    "403",
                    "A browser request from another origin, or an invoke token on an admin route",
                );
                add(
                    "421",
                    "The Host is not the listen address, localhost or an --allow-host",
                );
                add(
                    "500",
                    "A bug or an I/O failure in the host: the message has a reference to the log",
                );
            }
        }
    }
}

/// The query of `PUT /v1/functions/{name}`: the runtime, limits, policy and
/// configuration of the deploy. Each may also come in the JSON headers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes what `functions::deploy` reads from its query map.
pub struct DeployQuery {
    /// `wasm` (the default) or a container runtime's name.
    runtime: Option<String>,
    /// Container functions: answer once the image is built (201) instead of at once
    /// (202).
    wait: Option<bool>,
    /// Deadline of one call, ms (1..=900000, default 30000).
    timeout_ms: Option<u64>,
    /// Memory, MiB (default 128, at most 4096).
    memory_mb: Option<u64>,
    /// Largest output kept, bytes (default 6 MiB, at most 64 MiB).
    max_output_bytes: Option<u64>,
    /// Largest log kept per call, bytes (default 1 MiB, at most 16 MiB).
    max_log_bytes: Option<u64>,
    /// `none`, `runtime` or `function`.
    #[param(value_type = Option<mirror::Preload>)]
    preload: Option<String>,
    /// Instances kept ready.
    min_warm: Option<u32>,
    /// Cap on the function's instances (at most 1000).
    max_instances: Option<u32>,
    /// How long an idle instance above `min_warm` lives: `60s`, `500ms`, `5m`.
    keep_alive: Option<String>,
    /// Calls that may wait for an instance.
    max_queue: Option<u32>,
    /// Where the function may connect: `host:port,host:port`.
    allow_outbound: Option<String>,
    /// Also serve the function at this path prefix (`/api/dice`).
    route: Option<String>,
    /// The route's methods, comma-separated (`GET,POST`); needs `route`.
    route_methods: Option<String>,
}

/// The headers of `PUT /v1/functions/{name}`: JSON, since the body is the bundle.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Describes what `functions::deploy` reads from its headers.
pub struct DeployHeaders {
    /// Limits as a JSON object (`{"timeout_ms": 500}`); the query wins on conflict.
    #[param(rename = "x-newt-limits")]
    limits: Option<String>,
    /// Policy fields as a JSON object (`{"preload": "none"}`).
    #[param(rename = "x-newt-policy")]
    policy: Option<String>,
    /// Variables as a JSON object of strings.
    #[param(rename = "x-newt-env")]
    env: Option<String>,
    /// Secrets as a JSON object of strings (sealed at rest, never shown).
    #[param(rename = "x-newt-secrets")]
    secrets: Option<String>,
    /// Variables or secrets to remove, as a JSON array of names.
    #[param(rename = "x-newt-unset")]
    unset: Option<String>,
    /// Where the function may connect, as a JSON array of `host:port`.
    #[param(rename = "x-newt-allow-outbound")]
    allow_outbound: Option<String>,
}

/// Bytes of any kind: a bundle, a call's input or output.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Bundle(#[allow(dead_code)] Vec<u8>);

/// The `multipart/form-data` form of a deploy (the seed platform's).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // Describes what `functions::read_form_bundle` reads.
pub struct DeployForm {
    /// The bundle: a `.wasm`, or a `.tar.gz`/`.tar`/`.zip` for a container runtime.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    module: Vec<u8>,
}

/// The body of `PATCH /v1/functions/{name}`: policy fields (applied to the running
/// pool at once) and configuration (a new version of the same bundle).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes what `functions::patch` reads from its JSON object.
pub struct FunctionPatch {
    #[serde(flatten)]
    policy: crate::wire::PolicyPatch,
    /// Variables to set.
    env: Option<std::collections::BTreeMap<String, String>>,
    /// Secrets to set (sealed at rest, never shown).
    secrets: Option<std::collections::BTreeMap<String, String>>,
    /// Variables or secrets to remove.
    unset: Option<Vec<String>>,
    /// Where the function may connect (`host:port`), replacing the list.
    allow_outbound: Option<Vec<String>>,
}

/// The query of `GET /v1/calls`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes what `calls::list` reads from its query map.
pub struct CallsQuery {
    /// Only this function's calls.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    function: Option<String>,
    /// Only calls in this status.
    #[param(value_type = Option<mirror::CallStatus>)]
    status: Option<String>,
    /// At most this many (1..=1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only calls numbered below this (the next page).
    before: Option<i64>,
}

/// The query of `POST /v1/functions/{name}/invoke`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes what `functions::invoke` reads from its query map.
pub struct InvokeQuery {
    /// Answer 202 with the call's id at once; the call runs in the background.
    #[serde(rename = "async")]
    #[param(rename = "async")]
    is_async: Option<bool>,
}

/// The query of `DELETE /v1/routes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Describes what `routes::remove` reads from its query map.
pub struct RouteQuery {
    /// The route's path (`/api/dice`).
    path: String,
}

/// The JSON shapes of the engine's and the store's types, which cannot derive
/// `ToSchema` themselves (the engine knows nothing of HTTP). Each mirror has the
/// fields and names its type serializes to; the tests below compare them.
pub mod mirror {
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;
    use utoipa::ToSchema;

    /// Limits applied to every call of a function.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    pub struct Limits {
        /// Deadline of one call, ms (default 30000, at most 900000).
        pub timeout_ms: u64,
        /// Memory, MiB (default 128, at most 4096).
        pub memory_mb: u64,
        /// Output kept, bytes; a function writing more fails.
        pub max_output_bytes: u64,
        /// Logs kept per call, bytes; the rest is dropped.
        pub max_log_bytes: u64,
    }

    /// What is kept ready ahead of calls.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Preload {
        None,
        Runtime,
        Function,
    }

    /// A pool's preload policy.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    pub struct Policy {
        pub preload: Preload,
        /// Instances kept ready at all times.
        pub min_warm: u32,
        /// Cap on the function's instances (idle, busy and starting).
        pub max_instances: u32,
        /// How long an idle instance above `min_warm` lives (`60s`, `500ms`, `5m`).
        pub keep_alive: String,
        /// Calls that may wait for an instance.
        pub max_queue: u32,
    }

    /// A `keep_alive` as a request may write it: text (`60s`) or seconds.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(untagged)]
    pub enum KeepAlive {
        Text(String),
        Seconds(u64),
    }

    /// How a call found its instance.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum StartKind {
        Cold,
        Prewarmed,
        Warm,
    }

    /// A function's pool right now.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    pub struct PoolStats {
        pub function: String,
        pub version: i64,
        pub runtime: String,
        /// The preload policy in force.
        pub preload: String,
        pub idle: u64,
        pub busy: u64,
        pub starting: u64,
        pub waiting: u64,
        /// Calls so far by start kind.
        pub starts: BTreeMap<String, u64>,
        pub created: u64,
        /// Instances destroyed so far, by reason.
        pub destroyed: BTreeMap<String, u64>,
    }

    /// A runtime-level pool right now.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    pub struct RuntimePoolStats {
        pub runtime: String,
        pub policy: Policy,
        pub idle: u64,
        pub starting: u64,
        pub created: u64,
        /// Instances that left the pool so far, by reason.
        pub left: BTreeMap<String, u64>,
    }

    /// How a container runtime runs a function's code.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum RunMode {
        Agent,
        Command,
    }

    /// A container runtime: an image and how to use it.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ContainerRuntime {
        /// Used in deploys (`?runtime=NAME`).
        #[schema(pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
        pub name: String,
        /// A Docker image on the engine (nothing is pulled).
        pub image: String,
        /// Where function code is unpacked (default `/app`).
        pub path: Option<String>,
        /// Installs a bundle's `requirements.txt` at build time.
        pub dependencies: Option<String>,
        /// Used instead of `dependencies` when the bundle has a `wheels/` folder.
        pub dependencies_offline: Option<String>,
        /// Agent mode: starts the agent. Command mode: run per call.
        pub run: String,
        /// Default `command`.
        pub mode: Option<RunMode>,
        /// The preload policy of the runtime's functions.
        pub policy: Option<Policy>,
        /// The Python version the image provides (`"3.11"`), for bundles' `newt.toml`.
        pub python: Option<String>,
        /// Variables every container of the runtime starts with (a function's own win).
        #[schema(value_type = Option<Object>)]
        pub env: Option<std::collections::BTreeMap<String, String>>,
        /// Host paths mounted read-only, each under a `newt serve --allow-mount` directory.
        pub mounts: Option<Vec<RuntimeMount>>,
    }

    /// A read-only mount of a host path into a runtime's containers.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RuntimeMount {
        /// The host path (resolved, it must lie under an allowed directory).
        pub host: String,
        /// The absolute path in the container.
        pub container: String,
    }

    /// Status of a call.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum CallStatus {
        Pending,
        Running,
        Done,
        Failed,
        Timeout,
        Cancelled,
    }

    /// Where a function version is in its life.
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum VersionStatus {
        Pending,
        Ready,
        Failed,
    }

    /// An HTTP route: requests under `path` go to `function` when their method is in
    /// `methods` (empty: any).
    #[derive(Debug, Serialize, Deserialize, ToSchema)]
    pub struct StoredRoute {
        pub path: String,
        pub function: String,
        pub methods: Vec<String>,
        /// When it was added (Unix ms).
        pub created_at: i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    fn spec() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    /// Every `(path, method)` the document lists.
    fn documented(spec: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.insert((path.clone(), method.to_uppercase()));
            }
        }
        out
    }

    /// The paths `api/mod.rs` gives to `.route(...)`, with `/v1` before those of the
    /// routers nested under it (the `let v1... = Router::new()` ones), and the methods
    /// each is given. Read from the source, since an axum `Router` cannot list its
    /// routes.
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let mut out = BTreeSet::new();
        for (at, _) in source.match_indices(".route(") {
            let before = &source[..at];
            // The router a route is in: the `let NAME = Router::new()` statement it
            // follows, unless a `;` ends that statement before the last
            // `Router::new()` (the top-level router, built without a `let`).
            let let_at = before.rfind("let ").unwrap_or(0);
            let new_at = before.rfind("Router::new()").unwrap_or(0);
            let top_level = new_at < let_at || before[let_at..new_at].contains(';');
            let router = if top_level {
                ""
            } else {
                before[let_at + 4..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
            };
            let after = &source[at + ".route(".len()..];
            let quote = after.find('"').unwrap();
            let end = after[quote + 1..].find('"').unwrap();
            let path = &after[quote + 1..quote + 1 + end];
            // The method router: up to the `.route(` or statement that ends it.
            let call = &after[quote + 1 + end..];
            let stop = call
                .find(".route(")
                .into_iter()
                .chain(call.find(";"))
                .chain(call.find(".route_layer(admin_only())\n        .merge"))
                .min()
                .unwrap_or(call.len());
            let call = &call[..stop];
            let prefix = if router.starts_with("v1") { "/v1" } else { "" };
            for (token, method) in [
                ("get(", "GET"),
                ("post(", "POST"),
                ("put(", "PUT"),
                ("patch(", "PATCH"),
                ("delete(", "DELETE"),
                ("any(", "ANY"),
            ] {
                // `.get(`, `get(` and `(get(`, never `.layer(get...`.
                if call
                    .match_indices(token)
                    .any(|(i, _)| i == 0 || !call.as_bytes()[i - 1].is_ascii_alphanumeric())
                {
                    out.insert((format!("{prefix}{path}"), method.to_string()));
                }
            }
        }
        out
    }

    /// Routes the document leaves out on purpose (see the module docs).
    fn undocumented(path: &str) -> bool {
        const SEED: [&str; 7] = [
            "/registerRuntime",
            "/registerFunction/{runtime}/{name}",
            "/invokeFunction",
            "/calls",
            "/call/{num}",
            "/runtimes",
            "/functions",
        ];
        SEED.contains(&path) || path.starts_with("/fn/")
    }

    #[test]
    fn every_route_the_router_serves_is_documented() {
        let documented = documented(&spec());
        let routed = routed();
        // The parser itself must see the routes we know are there.
        for known in [
            ("/v1/functions/{name}/invoke", "POST"),
            ("/v1/functions/{name}", "PATCH"),
            ("/v1/runtimes/{name}", "DELETE"),
            ("/healthz", "GET"),
            ("/fn/{name}/{*path}", "ANY"),
        ] {
            let known = (known.0.to_string(), known.1.to_string());
            assert!(routed.contains(&known), "{known:?} not found in {routed:?}");
        }
        let missing: Vec<_> = routed
            .iter()
            .filter(|(path, _)| !undocumented(path))
            .filter(|route| !documented.contains(*route))
            .collect();
        assert!(
            missing.is_empty(),
            "routes served but not in the OpenAPI document: {missing:?}; add a \
             #[utoipa::path] to the handler and list it in ApiDoc's paths"
        );
        let phantom: Vec<_> = documented
            .iter()
            .filter(|route| !routed.contains(*route))
            .collect();
        assert!(phantom.is_empty(), "documented but not routed: {phantom:?}");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_token_scheme() {
        let spec = spec();
        assert_eq!(spec["openapi"], "3.1.0");
        assert_eq!(
            spec["components"]["securitySchemes"][TOKEN_SCHEME]["scheme"],
            "bearer"
        );
        assert_eq!(spec["security"], json!([{ TOKEN_SCHEME: [] }]));
        // The document itself and liveness need no token.
        for path in ["/v1/openapi.json", "/healthz"] {
            assert_eq!(
                spec["paths"][path]["get"]["security"],
                json!([{}]),
                "{path}"
            );
            assert!(spec["paths"][path]["get"]["responses"]["401"].is_null());
        }
    }

    #[test]
    fn every_error_response_is_the_error_body() {
        let spec = spec();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        let detail = &spec["components"]["schemas"]["ErrorDetail"];
        assert_eq!(detail["required"], json!(["code", "message"]));
    }

    /// The keys `value` serializes to.
    fn keys(value: impl Serialize) -> BTreeSet<String> {
        serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// The properties the document gives schema `name`.
    fn properties(spec: &Value, name: &str) -> BTreeSet<String> {
        spec["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn mirrors_have_the_fields_of_the_types_they_describe() {
        let spec = spec();
        let policy = newt_runtime::Policy::default();
        assert_eq!(
            keys(newt_runtime::Limits::default()),
            properties(&spec, "Limits")
        );
        assert_eq!(keys(&policy), properties(&spec, "Policy"));
        assert_eq!(
            keys(newt_runtime::PoolStats::default()),
            properties(&spec, "PoolStats")
        );
        let runtime_pool = newt_runtime::RuntimePoolStats {
            runtime: "python".into(),
            policy: policy.clone(),
            idle: 0,
            starting: 0,
            created: 0,
            left: Default::default(),
        };
        assert_eq!(keys(&runtime_pool), properties(&spec, "RuntimePoolStats"));
        let mut runtime = newt_runtime::ContainerRuntime::builtin_python();
        runtime.policy = Some(policy);
        runtime.dependencies_offline = Some("pip3 install --no-index".into());
        runtime.env.insert("A".into(), "1".into());
        runtime.mounts.push(newt_runtime::RuntimeMount {
            host: "/srv/models".into(),
            container: "/models".into(),
        });
        assert_eq!(keys(&runtime), properties(&spec, "ContainerRuntime"));
        assert_eq!(keys(&runtime.mounts[0]), properties(&spec, "RuntimeMount"));
        let route = crate::store::StoredRoute {
            path: "/api".into(),
            function: "f".into(),
            methods: vec![],
            created_at: 0,
        };
        assert_eq!(keys(&route), properties(&spec, "StoredRoute"));
        // Enums: every variant's name, as the real types write them.
        let names = |name: &str| -> BTreeSet<String> {
            spec["components"]["schemas"][name]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} is not an enum"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        use newt_runtime::{Preload, RunMode, StartKind};
        assert_eq!(names_of(&StartKind::ALL), names("StartKind"));
        assert_eq!(
            names_of(&[Preload::None, Preload::Runtime, Preload::Function]),
            names("Preload")
        );
        assert_eq!(
            names_of(&[RunMode::Agent, RunMode::Command]),
            names("RunMode")
        );
        assert_eq!(
            names_of(&crate::store::CallStatus::ALL),
            names("CallStatus")
        );
        assert_eq!(
            names_of(&crate::store::VersionStatus::ALL),
            names("VersionStatus")
        );
    }

    /// The names `values` serialize to.
    fn names_of<T: Serialize>(values: &[T]) -> BTreeSet<String> {
        values
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}
