//! Per-function resource limits.
//!
//! Every call runs under these. The defaults are safe for an unknown function; the
//! maxima bound what a deployer may ask for, so one function cannot take the host.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::error::{Error, Result};

/// Limits applied to every call of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, in milliseconds. Default 30 000 (30 s), the
    /// usual HTTP gateway timeout; at most 900 000 (15 min).
    pub timeout_ms: u64,
    /// Memory the function may use, in MiB: linear memory for wasm, the container's
    /// memory (= memory+swap) for containers. Default 128; at most 4096.
    pub memory_mb: u64,
    /// Bytes of output (stdout) kept; a function writing more fails. Default 6 MiB,
    /// the largest synchronous response payload peers accept; at most 64 MiB.
    pub max_output_bytes: u64,
    /// Bytes of logs (stderr) kept per call; the rest is dropped, the call goes on.
    /// Default 1 MiB; at most 16 MiB.
    pub max_log_bytes: u64,
}

/// Largest deadline a function may ask for.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Largest memory a function may ask for, in MiB. The wasm pooling allocator reserves
/// address space for this much per slot.
pub const MAX_MEMORY_MB: u64 = 4096;
/// Largest output a function may ask to return.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;
/// Largest log buffer a function may ask for.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            memory_mb: 128,
            max_output_bytes: 6 << 20,
            max_log_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Checks every field against its range; the message names the field and range.
    pub fn validate(&self) -> Result<()> {
        fn check(name: &str, value: u64, min: u64, max: u64) -> Result<()> {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(Error::InvalidLimits(format!(
                    "{name} = {value} is out of range {min}..={max}"
                )))
            }
        }
        check("timeout_ms", self.timeout_ms, 1, MAX_TIMEOUT_MS)?;
        check("memory_mb", self.memory_mb, 1, MAX_MEMORY_MB)?;
        check(
            "max_output_bytes",
            self.max_output_bytes,
            0,
            MAX_OUTPUT_BYTES,
        )?;
        check("max_log_bytes", self.max_log_bytes, 0, MAX_LOG_BYTES)?;
        Ok(())
    }

    /// The call deadline as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb << 20).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let err = Limits {
            memory_mb: MAX_MEMORY_MB + 1,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("memory_mb"), "{err}");
        let err = Limits {
            timeout_ms: 0,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn partial_json_fills_defaults_and_rejects_unknown_fields() {
        let l: Limits = serde_json::from_str(r#"{"timeout_ms": 500}"#).unwrap();
        assert_eq!(l.timeout_ms, 500);
        assert_eq!(l.memory_mb, 128);
        assert!(serde_json::from_str::<Limits>(r#"{"timeout": 5}"#).is_err());
    }
}
