//! The HTTP API (v1), built by [`app`] so tests can drive it without a socket.
//!
//! Routes are listed here; handlers live in one module per resource. Status codes are
//! decided only in [`error::ApiError`].

pub mod auth;
mod calls;
pub mod error;
mod functions;
mod gc;
pub mod guard;
pub mod listen;
pub mod logs;
pub mod openapi;
pub mod routes;
mod runtimes;
mod seed;
pub mod versions;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::HeaderMap;
use axum::routing::{any, get, post, put};
use serde_json::json;
use std::sync::Arc;

use crate::service::SharedService;
use guard::{BodyLimit, HttpOptions};

/// The whole HTTP application over `state`, with the default [`HttpOptions`] (any
/// `Host`: for in-process use, where there is no listen address).
pub fn app(state: SharedService) -> Router {
    app_with(state, HttpOptions::default())
}

/// The whole HTTP application over `state`, with the request guards of `options`.
///
/// Every request first passes the `Host` and `Origin` checks; then, on the routes
/// that take one, the token; then its body is read whole within the route's size
/// limit and the body timeout (a declared `Content-Length` over the limit is refused
/// before any of it is read); then the handler runs.
pub fn app_with(state: SharedService, options: HttpOptions) -> Router {
    let config = &state.config;
    let body = |max: usize, what: &'static str| {
        axum::middleware::from_fn_with_state(
            BodyLimit {
                max,
                timeout: options.body_timeout,
                what,
            },
            guard::limit_body,
        )
    };
    let bundle = || body(config.max_bundle_bytes, "bundle");
    let input = || body(config.max_input_bytes, "input");
    let json = || body(guard::MAX_JSON_BODY_BYTES, "JSON body");
    let admin_only = || axum::middleware::from_fn(auth::require_admin);
    // What an invoke token may do: invoke, and read its own calls (and their logs).
    let v1_invoke = Router::new()
        .route(
            "/functions/{name}/invoke",
            post(functions::invoke.layer(input()))
                .layer(DefaultBodyLimit::max(config.max_input_bytes)),
        )
        .route("/calls", get(calls::list))
        .route("/calls/{id}", get(calls::show))
        .route("/functions/{name}/logs", get(logs::logs));
    let v1 = Router::new()
        .route("/functions", get(functions::list))
        .route(
            "/functions/{name}",
            put(functions::deploy.layer(bundle()))
                .layer(DefaultBodyLimit::max(config.max_bundle_bytes))
                .get(functions::show)
                .patch(functions::patch.layer(json()))
                .delete(functions::delete),
        )
        .route("/functions/{name}/versions", get(versions::list))
        .route("/functions/{name}/aliases", get(versions::aliases))
        .route(
            "/functions/{name}/aliases/{alias}",
            put(versions::set_alias.layer(json())).delete(versions::delete_alias),
        )
        .route(
            "/functions/{name}/rollback",
            post(versions::rollback.layer(json())),
        )
        .route("/pools", get(functions::pools))
        .route("/gc", post(gc::collect))
        .route("/status", get(gc::status))
        .route(
            "/routes",
            get(routes::list)
                .put(routes::add.layer(json()))
                .post(routes::add.layer(json()))
                .delete(routes::remove),
        )
        .route(
            "/runtimes",
            get(runtimes::list).post(runtimes::create.layer(json())),
        )
        .route(
            "/runtimes/{name}",
            get(runtimes::show)
                .patch(runtimes::patch.layer(json()))
                .delete(runtimes::delete),
        )
        .route_layer(admin_only())
        .merge(v1_invoke)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // The seed platform's routes, in its shapes (see `seed`), behind the same token.
    let seed_invoke = Router::new()
        .route(
            "/invokeFunction",
            post(seed::invoke_function.layer(input()))
                .layer(DefaultBodyLimit::max(config.max_input_bytes)),
        )
        .route("/calls", get(seed::calls))
        .route("/call/{num}", get(seed::call));
    let seed = Router::new()
        .route(
            "/registerRuntime",
            post(seed::register_runtime.layer(json())),
        )
        .route(
            "/registerFunction/{runtime}/{name}",
            post(seed::register_function.layer(bundle()))
                .layer(DefaultBodyLimit::max(config.max_bundle_bytes)),
        )
        .route("/runtimes", get(seed::runtimes))
        .route("/functions", get(seed::functions))
        .route_layer(admin_only())
        .merge(seed_invoke)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // Functions over plain HTTP: every function at /fn/{name}, behind the same token.
    let functions_over_http = Router::new()
        .route("/fn/{name}", any(routes::serve_function.layer(input())))
        .route("/fn/{name}/", any(routes::serve_function.layer(input())))
        .route(
            "/fn/{name}/{*path}",
            any(routes::serve_function.layer(input())),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // Routes added with `newt route add` are served from the fallback, so no route can
    // take a path the API serves.
    let routed = routes::serve_route
        .layer(input())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::route_request,
        ));
    Router::new()
        .nest("/v1", v1)
        .merge(seed)
        .merge(functions_over_http)
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(metrics).route_layer(admin_only()).route_layer(
                axum::middleware::from_fn_with_state(state.clone(), auth::require_token),
            ),
        )
        .fallback(routed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(options),
            guard::check_request,
        ))
}

/// `GET /healthz`: liveness for anyone; the version, function count and backends'
/// state only for callers with the token (when one is configured).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    security(()),
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`; with the token (or none configured) also `version`, `functions` and each backend (`wasm`, `docker`)", body = Object)),
)]
async fn healthz(
    axum::extract::State(state): axum::extract::State<SharedService>,
    headers: HeaderMap,
) -> axum::Json<serde_json::Value> {
    if !auth::authorized(&state.config, &headers) {
        return axum::Json(json!({ "status": "ok" }));
    }
    let backends: serde_json::Map<String, serde_json::Value> = state
        .invoker
        .health()
        .await
        .into_iter()
        .map(|(name, health)| (name.to_string(), json!(health)))
        .collect();
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "functions": state.registry.count(),
    });
    // Each backend under its own name (`wasm`, `docker`).
    body.as_object_mut().expect("an object").extend(backends);
    axum::Json(body)
}

/// `GET /metrics`: Prometheus metrics (admin).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)),
)]
async fn metrics(
    axum::extract::State(state): axum::extract::State<SharedService>,
) -> impl axum::response::IntoResponse {
    let mut text = state.metrics.render(&state.invoker.pools());
    crate::metrics::render_store(&mut text, state.store.records_lost());
    crate::metrics::render_egress(&mut text, &state.invoker.egress_stats());
    if let Some(gc) = state.gc.get() {
        gc.render_metrics(&mut text);
    }
    if let Some(exporter) = state.call_feed.exporter.get() {
        crate::telemetry::render(&mut text, exporter);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
