//! `/v1/functions/{name}/versions`, `/aliases` and `/rollback`: a function's version
//! history, its aliases (a version, or a weighted split) and rollbacks. Each handler
//! parses, calls the service, and answers with the wire types defined here.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use newt_runtime::PoolStats;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

use super::error::{ApiError, ApiResult};
use crate::service::{RolledBack, SharedService, VersionsDetail};
use crate::store::{AliasTarget, StoredAlias};
use crate::wire::FunctionView;

/// One version, as `GET /v1/functions/{name}/versions` lists it: the version (its
/// config without secret values: their names only) and what points at it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
// Named apart from `wire::VersionView` (a history entry): one schema name each.
#[schema(as = VersionDetailView)]
pub struct VersionView {
    /// The version itself: number, status, digest, limits, env, secret names, ...
    #[serde(flatten)]
    pub version: FunctionView,
    /// Whether plain calls (`FN`) run it.
    pub serving: bool,
    /// Whether a rollback set it aside (plain calls do not run it until a rollback
    /// names it again).
    pub rolled_back: bool,
    /// The aliases pointing at it.
    pub aliases: Vec<String>,
    /// Its pool, if it has one now.
    #[schema(value_type = Option<super::openapi::mirror::PoolStats>)]
    pub pool: Option<PoolStats>,
}

/// `GET /v1/functions/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionsView {
    /// The function.
    pub function: String,
    /// The version plain calls run; `null` while none is ready.
    pub serving: Option<i64>,
    /// Every version, newest first.
    pub versions: Vec<VersionView>,
    /// Its aliases.
    pub aliases: Vec<AliasView>,
}

impl From<&VersionsDetail> for VersionsView {
    fn from(detail: &VersionsDetail) -> Self {
        VersionsView {
            function: detail.function.clone(),
            serving: detail.serving,
            versions: detail
                .versions
                .iter()
                .map(|info| VersionView {
                    version: FunctionView::from(&info.version),
                    serving: info.serving,
                    rolled_back: info.rolled_back,
                    aliases: info.aliases.clone(),
                    pool: info.pool.clone(),
                })
                .collect(),
            aliases: detail.aliases.iter().map(AliasView::from).collect(),
        }
    }
}

/// An alias: its versions with their weights (percent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasView {
    /// The function.
    pub function: String,
    /// The alias.
    pub alias: String,
    /// Version number (as text, a JSON object key) to weight in percent.
    pub versions: BTreeMap<String, u32>,
    /// When it was last set (Unix ms).
    pub updated_at: i64,
}

impl From<&StoredAlias> for AliasView {
    fn from(alias: &StoredAlias) -> Self {
        AliasView {
            function: alias.function.clone(),
            alias: alias.alias.clone(),
            versions: alias
                .targets
                .iter()
                .map(|t| (t.version.to_string(), t.weight))
                .collect(),
            updated_at: alias.updated_at,
        }
    }
}

/// `GET /v1/functions/{name}/aliases`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasList {
    /// The aliases, by name.
    pub aliases: Vec<AliasView>,
}

/// What `POST /v1/functions/{name}/rollback` did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackView {
    /// The function.
    pub function: String,
    /// The version that served before.
    pub from: i64,
    /// The version that serves now.
    pub to: i64,
    /// The ready versions newer than `to`, now set aside.
    pub set_aside: Vec<i64>,
}

impl From<RolledBack> for RollbackView {
    fn from(r: RolledBack) -> Self {
        RollbackView {
            function: r.function,
            from: r.from,
            to: r.to,
            set_aside: r.set_aside,
        }
    }
}

/// `GET /v1/functions/{name}/versions`: every version, which serves, which a rollback
/// set aside, the aliases and pools.
#[utoipa::path(
    get,
    path = "/v1/functions/{name}/versions",
    tag = "versions",
    params(("name" = String, Path, description = "The function's name")),
    responses((status = 200, description = "Every version: which serves, which a rollback set aside, their aliases and pools", body = VersionsView), (status = 400, description = "Bad name", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody)),
)]
pub async fn list(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<Json<VersionsView>> {
    let detail = service.versions_of(&name)?;
    Ok(Json(VersionsView::from(&detail)))
}

/// `GET /v1/functions/{name}/aliases`.
#[utoipa::path(
    get,
    path = "/v1/functions/{name}/aliases",
    tag = "versions",
    params(("name" = String, Path, description = "The function's name")),
    responses((status = 200, description = "The function's aliases", body = AliasList), (status = 400, description = "Bad name", body = super::openapi::ErrorBody), (status = 404, description = "No such function", body = super::openapi::ErrorBody)),
)]
pub async fn aliases(
    State(service): State<SharedService>,
    Path(name): Path<String>,
) -> ApiResult<Json<AliasList>> {
    let aliases = service.aliases_of(&name)?;
    Ok(Json(AliasList {
        aliases: aliases.iter().map(AliasView::from).collect(),
    }))
}

/// Reads an alias body: `{"version": 3}` or `{"versions": {"3": 90, "4": 10}}`.
fn alias_targets(body: &[u8]) -> ApiResult<Vec<AliasTarget>> {
    let shape = r#"send {"version": 3}, or {"versions": {"3": 90, "4": 10}} with whole-percent weights summing to 100"#;
    let bad = |what: String| ApiError::BadRequest(format!("{what}: {shape}"));
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("the body is not a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "version" && *k != "versions") {
        return Err(bad(format!("unknown field `{unknown}`")));
    }
    match (fields.remove("version"), fields.remove("versions")) {
        (Some(version), None) => {
            let version = version
                .as_i64()
                .ok_or_else(|| bad("`version` must be a whole number".into()))?;
            Ok(vec![AliasTarget {
                version,
                weight: 100,
            }])
        }
        (None, Some(Value::Object(split))) => split
            .into_iter()
            .map(|(version, weight)| {
                let version = crate::service::parse_version(&version)?;
                let weight = weight
                    .as_u64()
                    .and_then(|w| u32::try_from(w).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "the weight of version {version} is not a whole number"
                        ))
                    })?;
                Ok(AliasTarget { version, weight })
            })
            .collect(),
        (None, Some(_)) => Err(bad("`versions` must be an object".into())),
        (Some(_), Some(_)) => Err(bad("give `version` or `versions`, not both".into())),
        (None, None) => Err(bad("no version given".into())),
    }
}

/// `PUT /v1/functions/{name}/aliases/{alias}`: body `{"version": 3}` or `{"versions":
/// {"3": 90, "4": 10}}`; only ready versions of the function. 201 new, 200 replaced.
#[utoipa::path(
    put,
    path = "/v1/functions/{name}/aliases/{alias}",
    tag = "versions",
    params(("name" = String, Path, description = "The function's name"), ("alias" = String, Path, description = "The alias's name")),
    request_body(description = "`{\"version\": 3}` or `{\"versions\": {\"3\": 90, \"4\": 10}}` (weights)", content = Object, content_type = "application/json"),
    responses((status = 200, description = "Replaced", body = AliasView), (status = 201, description = "Created", body = AliasView), (status = 400, description = "Bad name, alias or body", body = super::openapi::ErrorBody), (status = 404, description = "No such function or version", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 409, description = "A version named is not ready", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the limit", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn set_alias(
    State(service): State<SharedService>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    crate::service::validate_name(&name)?;
    crate::service::validate_alias(&alias)?;
    let targets = alias_targets(&body)?;
    let (stored, created) = service.set_alias(&name, &alias, targets).await?;
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(AliasView::from(&stored))).into_response())
}

/// `DELETE /v1/functions/{name}/aliases/{alias}`: 204.
#[utoipa::path(
    delete,
    path = "/v1/functions/{name}/aliases/{alias}",
    tag = "versions",
    params(("name" = String, Path, description = "The function's name"), ("alias" = String, Path, description = "The alias's name")),
    responses((status = 204, description = "Removed"), (status = 400, description = "Bad name or alias", body = super::openapi::ErrorBody), (status = 404, description = "No such function or alias", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn delete_alias(
    State(service): State<SharedService>,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    service.delete_alias(&name, &alias).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/functions/{name}/rollback[?to=N]` (or body `{"to": N}`): serves the
/// previous ready version (or version N) at once. 409 when there is none.
#[utoipa::path(
    post,
    path = "/v1/functions/{name}/rollback",
    tag = "versions",
    params(("name" = String, Path, description = "The function's name"), ("to" = Option<i64>, Query, description = "The version to serve (default: the previous ready one)")),
    request_body(description = "None, or `{\"to\": N}`", content = Object, content_type = "application/json"),
    responses((status = 200, description = "Now serving `to`", body = RollbackView), (status = 400, description = "Bad name, to or body", body = super::openapi::ErrorBody), (status = 404, description = "No such function or version", body = super::openapi::ErrorBody), (status = 408, description = "The body did not arrive within --body-timeout", body = super::openapi::ErrorBody), (status = 409, description = "No earlier ready version, or the version is not ready", body = super::openapi::ErrorBody), (status = 413, description = "The body is over the limit", body = super::openapi::ErrorBody), (status = 507, description = "The disk under NEWT_HOME is full: nothing was stored", body = super::openapi::ErrorBody)),
)]
pub async fn rollback(
    State(service): State<SharedService>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Json<RollbackView>> {
    if let Some(unknown) = query.keys().find(|k| *k != "to") {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter `{unknown}`: the only one accepted is to"
        )));
    }
    let mut to = query
        .get("to")
        .map(|text| crate::service::parse_version(text))
        .transpose()?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            to: Option<i64>,
        }
        let parsed: Body = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected no body or {{\"to\": N}} (a version number): {e}"
            ))
        })?;
        if parsed.to.is_some() && to.is_some() {
            return Err(ApiError::BadRequest(
                "give the version in ?to= or in the body, not both".into(),
            ));
        }
        to = to.or(parsed.to);
    }
    let rolled = service.roll_back(&name, to).await?;
    Ok(Json(RollbackView::from(rolled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_bodies_name_one_version_or_a_split() {
        let one = alias_targets(br#"{"version": 3}"#).unwrap();
        assert_eq!(
            one,
            [AliasTarget {
                version: 3,
                weight: 100
            }]
        );
        let split = alias_targets(br#"{"versions": {"3": 90, "4": 10}}"#).unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(
            split[1],
            AliasTarget {
                version: 4,
                weight: 10
            }
        );
        for bad in [
            &br#"{"version": "3"}"#[..],
            br#"{"versions": {"3": 90.5, "4": 9.5}}"#,
            br#"{"versions": {"x": 100}}"#,
            br#"{"versions": {"3": -1}}"#,
            br#"{"versions": [3]}"#,
            br#"{"version": 3, "versions": {"3": 100}}"#,
            br#"{"verison": 3}"#,
            br#"{}"#,
            b"3",
            b"",
        ] {
            assert!(
                alias_targets(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
