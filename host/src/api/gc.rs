//! Retention over HTTP (admin): `POST /v1/gc[?dry_run=true]` removes (or lists) what
//! no live version references and old call records; `GET /v1/status` shows the disk
//! each kind of state uses.

use axum::Json;
use axum::extract::{Query, State};
use std::collections::HashMap;

use super::error::{ApiError, ApiResult};
use crate::service::SharedService;
use crate::service::gc::{GcReport, StatusView};

/// `POST /v1/gc[?dry_run=true]`: removes old call records and every bundle, compiled
/// artifact and function image no live version references; with `dry_run`, only
/// says what would go. Answers per kind (records, bundles, artifacts, images) the
/// count and bytes, and each item with why it goes.
#[utoipa::path(
    post,
    path = "/v1/gc",
    tag = "meta",
    params(("dry_run" = Option<bool>, Query, description = "List what would go; remove nothing")),
    responses((status = 200, description = "What was removed (or would be): per kind, count and bytes; each item with why", body = Object), (status = 400, description = "Bad parameter", body = super::openapi::ErrorBody), (status = 503, description = "Retention is not set up in this server", body = super::openapi::ErrorBody)),
)]
pub async fn collect(
    State(service): State<SharedService>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<GcReport>> {
    let mut dry_run = false;
    for (key, value) in &query {
        match key.as_str() {
            "dry_run" => {
                dry_run = match value.as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "dry_run takes true or false, not {:?}",
                            other.chars().take(40).collect::<String>()
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {:?}: POST /v1/gc takes dry_run",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    let collector = service.collector()?.clone();
    Ok(Json(collector.collect(&service, dry_run).await?))
}

/// `GET /v1/status`: disk used by each kind of state (`db`, `cas`, `cache`,
/// `images`), the counts of functions, versions and call records, and the
/// retention settings.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "meta",
    responses((status = 200, description = "Disk used per kind, counts, retention settings", body = Object), (status = 503, description = "Retention is not set up in this server", body = super::openapi::ErrorBody)),
)]
pub async fn status(State(service): State<SharedService>) -> ApiResult<Json<StatusView>> {
    let collector = service.collector()?.clone();
    Ok(Json(collector.status(&service).await?))
}
