//! The HTTP API (v1), built by [`app`] so tests can drive it without a socket.
//!
//! Routes are listed here; handlers live in one module per resource. Status codes are
//! decided only in [`error::ApiError`].

mod auth;
mod calls;
pub mod error;
mod functions;
mod runtimes;
mod seed;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use serde_json::json;

use crate::service::SharedService;
use error::ApiError;

/// The whole HTTP application over `state`.
pub fn app(state: SharedService) -> Router {
    let config = &state.config;
    let v1 = Router::new()
        .route("/functions", get(functions::list))
        .route(
            "/functions/{name}",
            put(functions::deploy)
                .layer(DefaultBodyLimit::max(config.max_bundle_bytes))
                .get(functions::show)
                .patch(functions::patch)
                .delete(functions::delete),
        )
        .route(
            "/functions/{name}/invoke",
            post(functions::invoke).layer(DefaultBodyLimit::max(config.max_input_bytes)),
        )
        .route("/calls", get(calls::list))
        .route("/calls/{id}", get(calls::show))
        .route("/pools", get(functions::pools))
        .route("/runtimes", get(runtimes::list).post(runtimes::create))
        .route(
            "/runtimes/{name}",
            get(runtimes::show)
                .patch(runtimes::patch)
                .delete(runtimes::delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // The seed platform's routes, with its bodies, behind the same token.
    let seed = Router::new()
        .route("/registerRuntime", post(runtimes::create))
        .route(
            "/registerFunction/{runtime}/{name}",
            post(seed::register_function).layer(DefaultBodyLimit::max(config.max_bundle_bytes)),
        )
        .route(
            "/invokeFunction",
            post(seed::invoke_function).layer(DefaultBodyLimit::max(config.max_input_bytes)),
        )
        .route("/runtimes", get(seed::runtimes))
        .route("/functions", get(seed::functions))
        .route("/calls", get(seed::calls))
        .route("/call/{num}", get(seed::call))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/v1", v1)
        .merge(seed)
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(metrics).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_token,
            )),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn healthz(
    axum::extract::State(state): axum::extract::State<SharedService>,
) -> axum::Json<serde_json::Value> {
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

async fn metrics(
    axum::extract::State(state): axum::extract::State<SharedService>,
) -> impl axum::response::IntoResponse {
    let text = state.metrics.render(&state.invoker.pools());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
