//! Bearer-token check for `/v1` routes.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::service::SharedService;

/// Lets a request through when no token is configured or it carries the right one.
pub async fn require_token(
    State(state): State<SharedService>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !authorized(state.config.token.as_deref(), request.headers()) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

/// Whether `headers` carry the configured token (always, when none is configured).
pub fn authorized(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    tokens_match(given, expected)
}

/// Compares the SHA-256 digests of both tokens without an early exit: the time taken
/// reveals neither how much of a guess was right nor the token's length.
fn tokens_match(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens() {
        assert!(tokens_match("secret", "secret"));
        assert!(!tokens_match("secret", "secreT"));
        assert!(!tokens_match("secret", "secret2"));
        assert!(!tokens_match("", "x"));
        assert!(!tokens_match("x", ""));
    }

    #[test]
    fn a_configured_token_must_come_as_a_bearer() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(authorized(None, &HeaderMap::new()));
        let token = Some("s3cret");
        assert!(!authorized(token, &HeaderMap::new()));
        assert!(!authorized(token, &headers("s3cret")));
        assert!(!authorized(token, &headers("Bearer s3cre")));
        assert!(authorized(token, &headers("Bearer s3cret")));
    }
}
