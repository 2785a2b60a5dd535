//! The connection to the Docker engine.
//!
//! newt speaks Docker Engine API 1.41 (Docker 20.10, what Debian ships) and nothing
//! newer. The engine may be absent or down: newt still starts, wasm keeps working, and
//! every container operation answers "unavailable" with the address and the reason.

use bollard::{ClientVersion, Docker};

use crate::error::Error;

/// The API version newt requests; newer versions would be refused by Docker 20.10.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Seconds bollard waits for one engine request (image builds stream, so this bounds
/// silence, not the whole build).
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Where the engine listens when `DOCKER_HOST` is unset.
pub(crate) const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A client for the engine at `address` (a `DOCKER_HOST` value).
pub(crate) fn connect(address: &str) -> Result<Docker, String> {
    let result = if let Some(path) = address.strip_prefix("unix://") {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, &API_VERSION)
    } else if address.starts_with("tcp://") || address.starts_with("http://") {
        Docker::connect_with_http(address, REQUEST_TIMEOUT_SECS, &API_VERSION)
    } else {
        return Err(format!(
            "unsupported DOCKER_HOST {address:?}: use unix:///path or tcp://host:port"
        ));
    };
    result.map_err(|e| e.to_string())
}

/// The `unavailable` error for an engine that did not answer.
pub(crate) fn unreachable(address: &str, reason: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        backend: "docker",
        reason: format!("Docker engine not reachable at {address}: {reason}"),
    }
}
