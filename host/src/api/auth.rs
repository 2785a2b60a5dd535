//! Bearer tokens and their two roles.
//!
//! The admin token (`--token`) may do everything. Invoke tokens (`--invoke-token
//! NAME=TOKEN`) may invoke functions and read the calls they made, nothing else:
//! deploys, deletes, runtimes, policies, pools and metrics answer 403, and another
//! caller's call answers 404 as if it did not exist (so call numbers cannot be
//! enumerated). With no token configured (a loopback-only server), everyone is admin.

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::service::{ServerConfig, SharedService};

/// Who is asking, once their token is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The admin token, or anyone on a server without tokens.
    Admin,
    /// An invoke token, by its name.
    Invoker(String),
}

impl Caller {
    /// The name recorded on calls this caller makes (`None` for the admin).
    pub fn name(&self) -> Option<String> {
        match self {
            Caller::Admin => None,
            Caller::Invoker(name) => Some(name.clone()),
        }
    }

    /// Whether this caller may read a call `caller` made.
    pub fn may_read(&self, caller: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Invoker(name) => caller == Some(name.as_str()),
        }
    }
}

/// Lets a request through with a known token (or when none is configured), noting
/// who the caller is for the handlers.
pub async fn require_token(
    State(state): State<SharedService>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = caller_of(&state.config, request.headers()).ok_or(ApiError::Unauthorized)?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Lets only the admin through (after [`require_token`]).
pub async fn require_admin(
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match caller {
        Caller::Admin => Ok(next.run(request).await),
        Caller::Invoker(name) => Err(ApiError::Forbidden(format!(
            "the token `{name}` may only invoke functions and read its own calls: this needs \
             the admin token"
        ))),
    }
}

/// The caller `headers` identify: `None` when tokens are configured and none matches.
pub fn caller_of(config: &ServerConfig, headers: &HeaderMap) -> Option<Caller> {
    if config.token.is_none() && config.invoke_tokens.is_empty() {
        return Some(Caller::Admin);
    }
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let admin = config
        .token
        .as_deref()
        .is_some_and(|token| tokens_match(given, token));
    // Every token is compared, whichever matches: the time taken says nothing.
    let mut invoker = None;
    for (name, token) in &config.invoke_tokens {
        if tokens_match(given, token) && invoker.is_none() {
            invoker = Some(name.clone());
        }
    }
    if admin {
        Some(Caller::Admin)
    } else {
        invoker.map(Caller::Invoker)
    }
}

/// Whether `headers` carry the admin token (always, when no token is configured).
pub fn authorized(config: &ServerConfig, headers: &HeaderMap) -> bool {
    caller_of(config, headers) == Some(Caller::Admin)
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

    fn config(token: Option<&str>, invoke: &[(&str, &str)]) -> ServerConfig {
        ServerConfig {
            token: token.map(str::to_string),
            invoke_tokens: invoke
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            ..ServerConfig::default()
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_configured_token_must_come_as_a_bearer() {
        assert!(authorized(&config(None, &[]), &HeaderMap::new()));
        let token = config(Some("s3cret"), &[]);
        assert!(!authorized(&token, &HeaderMap::new()));
        assert!(!authorized(&token, &headers("s3cret")));
        assert!(!authorized(&token, &headers("Bearer s3cre")));
        assert!(authorized(&token, &headers("Bearer s3cret")));
    }

    #[test]
    fn invoke_tokens_are_callers_by_name_and_never_admins() {
        let both = config(Some("admin"), &[("app", "inv1"), ("ci", "inv2")]);
        assert_eq!(
            caller_of(&both, &headers("Bearer admin")),
            Some(Caller::Admin)
        );
        assert_eq!(
            caller_of(&both, &headers("Bearer inv2")),
            Some(Caller::Invoker("ci".into()))
        );
        assert_eq!(caller_of(&both, &headers("Bearer nope")), None);
        assert_eq!(caller_of(&both, &HeaderMap::new()), None);
        assert!(!authorized(&both, &headers("Bearer inv1")));
        let app = Caller::Invoker("app".into());
        assert!(app.may_read(Some("app")));
        assert!(!app.may_read(Some("ci")));
        assert!(!app.may_read(None));
        assert!(Caller::Admin.may_read(Some("app")));
    }
}
