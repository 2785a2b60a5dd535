//! API errors and the one place their HTTP status is decided.
//!
//! Every error leaves as `{"error": {"code": "...", "message": "..."}}`; the message
//! says what to fix. `code` is stable for scripts, `message` is for people.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request itself is wrong (bad name, bad query value, ...).
    BadRequest(String),
    /// 401: a token is configured and the request did not carry it.
    Unauthorized,
    /// 403: refused whoever asks, e.g. a browser's cross-origin request.
    Forbidden(String),
    /// 404: no such function, call or route.
    NotFound(String),
    /// 408: the request's body did not arrive in time.
    RequestTimeout(String),
    /// 409: the request conflicts with the current state.
    Conflict(String),
    /// 413: the body is larger than the limit for this route.
    TooLarge(String),
    /// 415: the body is not in a form this route reads.
    UnsupportedMediaType(String),
    /// 421: the request names a host this server does not answer to (DNS rebinding).
    Misdirected(String),
    /// 422: the bundle is not something newt can run.
    InvalidBundle(String),
    /// 429: no capacity left; retry after the given seconds.
    TooManyRequests { message: String, retry_after: u64 },
    /// 502: the function ran and failed (error exit, trap, limit hit).
    FunctionFailed(String),
    /// 503: a backend the request needs is unavailable.
    Unavailable(String),
    /// 504: the function ran past its deadline.
    Timeout(String),
    /// 507: the disk under NEWT_HOME is full, so what the request had to store (a
    /// bundle, a version, an accepted call) was not stored and nothing changed.
    InsufficientStorage(String),
    /// 500: a bug or an I/O failure in the host. The caller gets a generic message
    /// and a reference; the detail (paths, Docker's words) goes only to the log.
    Internal(anyhow::Error),
}

/// Whether `error`, or an error it wraps, says the disk is full: `ENOSPC` or a quota
/// (writing a bundle, a compiled module, a build directory) or SQLite's `SQLITE_FULL`
/// (a version, a runtime, a call record).
pub fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let io_full = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        });
        if io_full || crate::store::is_sqlite_full(e) {
            return true;
        }
        next = e.source();
    }
    false
}

impl ApiError {
    /// 507 for `error`, which [`is_disk_full`]: `refused` says what the request did
    /// not do ("the deploy was not stored..."). The detail (paths, SQLite's words) goes
    /// to the log only, like an internal error's.
    pub fn disk_full(refused: &str, error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!("the disk under NEWT_HOME is full: {error:#}");
        ApiError::InsufficientStorage(format!(
            "the disk under NEWT_HOME is full: {refused}. Free space on the filesystem that \
             holds NEWT_HOME (bundles in cas/, compiled modules in cache/, the database \
             newt.db), then retry"
        ))
    }

    /// The status and stable code of each variant.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected_request"),
            ApiError::InvalidBundle(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_bundle"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "at_capacity"),
            ApiError::FunctionFailed(_) => (StatusCode::BAD_GATEWAY, "function_failed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::InsufficientStorage(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::RequestTimeout(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Misdirected(m)
            | ApiError::InvalidBundle(m)
            | ApiError::FunctionFailed(m)
            | ApiError::Unavailable(m)
            | ApiError::Timeout(m)
            | ApiError::InsufficientStorage(m) => m.clone(),
            ApiError::TooManyRequests { message, .. } => message.clone(),
            ApiError::Unauthorized => {
                "this server requires a token: send `Authorization: Bearer <token>` \
                 (the CLI reads it from NEWT_TOKEN)"
                    .into()
            }
            ApiError::Internal(e) => format!("{e:#}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = self.message();
        let message = if let ApiError::Internal(_) = self {
            // The detail may name host paths or Docker's internals: it goes to the
            // log, the caller gets a reference to find it there.
            let reference = uuid::Uuid::now_v7().simple().to_string();
            tracing::error!(%status, reference, "{detail}");
            format!("internal error (reference {reference}): the server's log has the details")
        } else {
            if status.is_server_error() && !matches!(self, ApiError::FunctionFailed(_)) {
                tracing::error!(%status, "{detail}");
            }
            detail
        };
        let body = json!({ "error": { "code": code, "message": message } });
        let mut response = (status, axum::Json(body)).into_response();
        match &self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            // The rest of the body may still be coming (or never come): do not wait
            // for it to reuse the connection.
            ApiError::TooLarge(_) | ApiError::RequestTimeout(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<newt_runtime::Error> for ApiError {
    fn from(e: newt_runtime::Error) -> Self {
        use newt_runtime::Error as E;
        match e {
            E::InvalidBundle(m) => ApiError::InvalidBundle(m),
            E::InvalidLimits(m) => ApiError::BadRequest(format!("invalid limits: {m}")),
            E::InvalidRuntime(m) => ApiError::InvalidBundle(format!("invalid runtime: {m}")),
            E::InvalidPolicy(m) => ApiError::BadRequest(format!("invalid policy: {m}")),
            E::InstanceStart(m) => {
                ApiError::FunctionFailed(format!("the function's instance could not start: {m}"))
            }
            E::UnknownRuntime(r) => ApiError::BadRequest(format!(
                "unknown runtime `{r}`: use `wasm` or a registered container runtime"
            )),
            E::Unavailable { backend, reason } => {
                ApiError::Unavailable(format!("{backend} unavailable: {reason}"))
            }
            E::Deadline(m) => ApiError::Timeout(m),
            E::Busy(m) => ApiError::TooManyRequests {
                message: m,
                retry_after: 1,
            },
            E::AtCapacity { .. } => ApiError::TooManyRequests {
                message: e.to_string(),
                retry_after: 1,
            },
            E::Io { .. } if is_disk_full(&e) => {
                ApiError::disk_full("what this request had to write was not stored", &e)
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if is_disk_full(e.as_ref()) {
            return ApiError::disk_full("what this request had to write was not stored", &e);
        }
        ApiError::Internal(e)
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(e: ApiError) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
        let response = e.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap(), headers)
    }

    #[tokio::test]
    async fn each_variant_has_its_status_and_code() {
        let cases = [
            (ApiError::BadRequest("b".into()), 400, "bad_request"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden("f".into()), 403, "forbidden"),
            (ApiError::RequestTimeout("r".into()), 408, "request_timeout"),
            (ApiError::NotFound("n".into()), 404, "not_found"),
            (ApiError::Conflict("c".into()), 409, "conflict"),
            (ApiError::TooLarge("t".into()), 413, "too_large"),
            (
                ApiError::UnsupportedMediaType("u".into()),
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::Misdirected("m".into()),
                421,
                "misdirected_request",
            ),
            (ApiError::InvalidBundle("i".into()), 422, "invalid_bundle"),
            (
                ApiError::TooManyRequests {
                    message: "m".into(),
                    retry_after: 2,
                },
                429,
                "at_capacity",
            ),
            (ApiError::FunctionFailed("f".into()), 502, "function_failed"),
            (ApiError::Unavailable("u".into()), 503, "unavailable"),
            (ApiError::Timeout("t".into()), 504, "timeout"),
            (
                ApiError::InsufficientStorage("s".into()),
                507,
                "insufficient_storage",
            ),
            (ApiError::Internal(anyhow::anyhow!("x")), 500, "internal"),
        ];
        for (error, status, code) in cases {
            let (got_status, body, _) = parts(error).await;
            assert_eq!(got_status.as_u16(), status);
            assert_eq!(body["error"]["code"], code);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }

    #[tokio::test]
    async fn unauthorized_and_429_carry_their_headers() {
        let (_, _, headers) = parts(ApiError::Unauthorized).await;
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        let (_, _, headers) = parts(ApiError::TooManyRequests {
            message: "full".into(),
            retry_after: 3,
        })
        .await;
        assert_eq!(headers[header::RETRY_AFTER], "3");
        for error in [
            ApiError::TooLarge("t".into()),
            ApiError::RequestTimeout("r".into()),
        ] {
            let (_, _, headers) = parts(error).await;
            assert_eq!(headers[header::CONNECTION], "close");
        }
    }

    #[tokio::test]
    async fn internal_errors_answer_a_reference_not_the_detail() {
        let error = anyhow::anyhow!("opening /home/alice/.newt/cas/ab/cdef: permission denied")
            .context("docker: no such image sha256:0123 on unix:///var/run/docker.sock");
        let (status, body, _) = parts(ApiError::Internal(error)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        let message = body["error"]["message"].as_str().unwrap();
        for secret in ["/home/alice", "docker", ".sock", "sha256", "permission"] {
            assert!(!message.contains(secret), "{message}");
        }
        assert!(message.contains("reference "), "{message}");
        // Each answer has its own reference.
        let (_, other, _) = parts(ApiError::Internal(anyhow::anyhow!("x"))).await;
        assert_ne!(other["error"]["message"], body["error"]["message"]);
    }

    #[test]
    fn runtime_errors_map_to_the_right_variant() {
        use newt_runtime::Error as E;
        let cases = [
            (E::InvalidBundle("x".into()), 422),
            (E::InvalidLimits("x".into()), 400),
            (E::InvalidRuntime("x".into()), 422),
            (E::InvalidPolicy("x".into()), 400),
            (E::InstanceStart("x".into()), 502),
            (E::UnknownRuntime("x".into()), 400),
            (
                E::Unavailable {
                    backend: "docker",
                    reason: "down".into(),
                },
                503,
            ),
            (
                E::AtCapacity {
                    function: "f".into(),
                    reason: "full".into(),
                },
                429,
            ),
            (E::Deadline("x".into()), 504),
            (E::Busy("x".into()), 429),
            (E::MissingBundle { digest: "d".into() }, 500),
            (
                E::Io {
                    action: "writing",
                    path: "/home/alice/.newt/cas/tmp/.tmp1".into(),
                    source: std::io::ErrorKind::StorageFull.into(),
                },
                507,
            ),
            (
                E::Io {
                    action: "writing",
                    path: "x".into(),
                    source: std::io::ErrorKind::QuotaExceeded.into(),
                },
                507,
            ),
            (
                E::Io {
                    action: "writing",
                    path: "x".into(),
                    source: std::io::ErrorKind::PermissionDenied.into(),
                },
                500,
            ),
        ];
        for (error, status) in cases {
            let api: ApiError = error.into();
            assert_eq!(api.status_and_code().0.as_u16(), status, "{api:?}");
        }
    }

    /// A full disk, however deep in the chain and from whichever layer (the file
    /// system, SQLite), answers 507 with what happened and what to do, and without
    /// the detail (paths, SQLite's words).
    #[tokio::test]
    async fn a_full_disk_answers_507_with_what_to_do() {
        let sqlite_full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let enospc = std::io::Error::from_raw_os_error(28);
        let full: Vec<anyhow::Error> = vec![
            anyhow::Error::new(sqlite_full).context("adding version 2 of `echo`"),
            anyhow::Error::new(enospc)
                .context("writing /home/alice/.newt/newt.db-wal")
                .context("recording call 42"),
        ];
        for error in full {
            assert!(is_disk_full(error.as_ref()), "{error:#}");
            let (status, body, _) = parts(ApiError::from(error)).await;
            assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
            assert_eq!(body["error"]["code"], "insufficient_storage");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("NEWT_HOME is full"), "{message}");
            assert!(message.contains("Free space"), "{message}");
            for detail in ["/home/alice", "database or disk", "version 2"] {
                assert!(!message.contains(detail), "{message}");
            }
        }
        let other = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        );
        let error = anyhow::Error::new(other).context("adding a version");
        assert!(!is_disk_full(error.as_ref()));
        assert_eq!(
            ApiError::from(error).status_and_code().0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
