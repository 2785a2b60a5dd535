//! Functions over plain HTTP: `ANY /fn/{name}[/...]` for every function, the routes
//! added with `newt route add` (served from the fallback, so the API's own paths
//! always come first), and `/v1/routes` to manage them.
//!
//! A routed request passes the same guards as `invoke`: the token (an invoke token
//! will do), the input size limit and the body timeout. Its call is recorded like any
//! other; the answer carries `x-newt-call-id`, `x-newt-start` and `server-timing`.
//! How the request reaches the function and its answer comes back is in
//! [`crate::service::routes`].

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use newt_runtime::{CallResult, HttpRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;

use super::auth::{self, Caller};
use super::error::{ApiError, ApiResult};
use crate::service::SharedService;
use crate::service::routes::{HttpAnswer, Routed, answer_of};
use crate::store::StoredRoute;

/// The body of `PUT`/`POST /v1/routes`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// The path prefix, e.g. `/api/dice`.
    pub path: String,
    /// The function that serves it.
    pub function: String,
    /// The methods it accepts; empty or absent: any.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// `GET /v1/routes`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteList {
    /// Every route, by path.
    #[schema(value_type = Vec<super::openapi::mirror::StoredRoute>)]
    pub routes: Vec<StoredRoute>,
}

/// `GET /v1/routes`: every route, by path.
#[utoipa::path(
    get,
    path = "/v1/routes",
    tag = "routes",
    responses((status = 200, description = "Every route, by path", body = RouteList)),
)]
pub async fn list(State(service): State<SharedService>) -> Json<RouteList> {
    Json(RouteList {
        routes: service.routes.list(),
    })
}

/// `PUT` or `POST /v1/routes`: adds the route, or replaces the one at its path (201
/// new, 200 replaced).
#[utoipa::path(
    method(put, post),
    path = "/v1/routes",
    tag = "routes",
    request_body(content = RouteBody, content_type = "application/json"),
    responses((status = 200, description = "Replaced the route at that path", body = super::openapi::mirror::StoredRoute), (status = 201, description = "Added", body = super::openapi::mirror::StoredRoute), (status = 400, description = "A bad path (or one under /v1, /fn, /healthz, /metrics or the seed routes), function name or method", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the route's limit", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn add(
    State(service): State<SharedService>,
    body: Result<Json<RouteBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<StoredRoute>)> {
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"path\": \"/api/x\", \"function\": \"name\", \"methods\": [\"GET\"]}}: {}",
            e.body_text()
        ))
    })?;
    let (route, created) = service
        .add_route(&body.path, &body.function, &body.methods)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(route)))
}

/// `DELETE /v1/routes?path=/api/x`: 204.
#[utoipa::path(
    delete,
    path = "/v1/routes",
    tag = "routes",
    params(super::openapi::RouteQuery),
    responses((status = 204, description = "Removed"), (status = 400, description = "No path given", body = super::openapi::ErrorBody), (status = 404, description = "No route at that path", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn remove(
    State(service): State<SharedService>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let path = query
        .get("path")
        .ok_or_else(|| ApiError::BadRequest("name the route: ?path=/api/x".into()))?;
    service.remove_route(path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `ANY /fn/{name}` and `ANY /fn/{name}/{*path}`: the function sees the path after
/// `/fn/{name}` (`/` when there is none).
pub async fn serve_function(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    request: Request,
) -> ApiResult<Response> {
    let raw = request.uri().path();
    let after = raw.strip_prefix("/fn/").unwrap_or_default();
    let (name, rest) = match after.find('/') {
        Some(slash) => (&after[..slash], &after[slash..]),
        None => (after, "/"),
    };
    let (name, rest) = (name.to_string(), rest.to_string());
    serve(&service, &caller, &name, rest, request).await
}

/// Middleware in front of the fallback: finds the route of a request that no API
/// path took (404 when none), checks the token (401) and the method (405 with
/// `allow`), all before the body is read.
pub async fn route_request(
    State(service): State<SharedService>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(routed) = service.routes.lookup(request.uri().path()) else {
        return Err(ApiError::NotFound(format!(
            "no route for {}",
            request.uri().path()
        )));
    };
    let caller =
        auth::caller_of(&service.config, request.headers()).ok_or(ApiError::Unauthorized)?;
    let methods = &routed.route.methods;
    if !methods.is_empty() && !methods.iter().any(|m| m == request.method().as_str()) {
        let allow = methods.join(", ");
        let message = format!(
            "the route {} (function `{}`) accepts {allow}, not {}",
            routed.route.path,
            routed.route.function,
            request.method()
        );
        let body = json!({ "error": { "code": "method_not_allowed", "message": message } });
        let mut response = (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return Ok(response);
    }
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(routed);
    Ok(next.run(request).await)
}

/// The fallback's handler, after [`route_request`] and the body limit.
pub async fn serve_route(
    State(service): State<SharedService>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(routed): axum::Extension<Routed>,
    request: Request,
) -> ApiResult<Response> {
    serve(
        &service,
        &caller,
        &routed.route.function,
        routed.rest,
        request,
    )
    .await
}

/// Runs the call for `request` on function `name`, the function seeing `path`.
async fn serve(
    service: &SharedService,
    caller: &Caller,
    name: &str,
    path: String,
    request: Request,
) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    // The body limit middleware has read it whole already.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
    // With tokens on, `authorization` carried newt's token: it is not the function's.
    let strip_authorization =
        service.config.token.is_some() || !service.config.invoke_tokens.is_empty();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !(strip_authorization && *name == header::AUTHORIZATION))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let http = HttpRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
    };
    let call = service.invoke_http(name, http, body, caller.name()).await?;
    let call_id = call.invoked.call_id;
    let outcome = match call.invoked.outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            let mut response = ApiError::from(e).into_response();
            super::functions::insert_header(response.headers_mut(), "x-newt-call-id", &call_id);
            return Ok(response);
        }
    };
    let mut response = match &outcome.result {
        CallResult::Done => match answer_of(&outcome, call.enveloped).and_then(into_response) {
            Ok(response) => response,
            Err(why) => ApiError::FunctionFailed(format!(
                "the function's answer is not a valid HTTP response: {why}"
            ))
            .into_response(),
        },
        CallResult::Failed(message) => ApiError::FunctionFailed(message.clone()).into_response(),
        CallResult::Timeout(message) => ApiError::Timeout(message.clone()).into_response(),
    };
    super::functions::call_headers(
        response.headers_mut(),
        &call_id,
        outcome.start,
        outcome.timings,
    );
    Ok(response)
}

/// Headers a function may not set: the connection's own (hyper frames the body) and
/// the host's `x-newt-*`.
fn reserved_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    ) || name.as_str().starts_with("x-newt-")
}

/// The function's answer as a response; `Err` names what is not valid HTTP.
fn into_response(answer: HttpAnswer) -> Result<Response, String> {
    let status = StatusCode::from_u16(answer.status)
        .map_err(|_| format!("{} is not a status code", answer.status))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &answer.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        if !reserved_header(&name) {
            headers.append(name, value);
        }
    }
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}
