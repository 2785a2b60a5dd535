//! The preload policy: how warm a function's pool is kept.
//!
//! Set on a runtime (the default for its functions) and overridden on a function.
//! Every field has a default that suits an unknown function; changing a policy takes
//! effect on the running pool without a restart.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

use crate::error::{Error, Result};

/// What is kept ready ahead of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preload {
    /// Nothing: every call creates its instance and destroys it afterwards (`cold`).
    /// The strictest isolation, and the baseline of `newt bench`.
    None,
    /// Generic runtime-level instances that any function of the runtime can take and
    /// load itself into (`prewarmed`). For wasm the engine and linker are that, always.
    Runtime,
    /// Instances already loaded with the function (`warm`).
    #[default]
    Function,
}

impl Preload {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Preload::None => "none",
            Preload::Runtime => "runtime",
            Preload::Function => "function",
        }
    }
}

/// A pool's preload policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// What is kept ready. Default `function`.
    pub preload: Preload,
    /// Instances kept ready at all times, refilled in the background. Default 0: no
    /// instance is held for a function nobody calls.
    pub min_warm: u32,
    /// Hard cap on a function's instances (idle, busy and starting). Default 16; at
    /// most 1000 (the wasm allocator's slots).
    pub max_instances: u32,
    /// How long an idle instance above `min_warm` lives. Default 60 s; written like
    /// `"60s"`, `"500ms"`, `"5m"`.
    #[serde(serialize_with = "write_duration", deserialize_with = "read_duration")]
    pub keep_alive: Duration,
    /// Calls that may wait for an instance when all `max_instances` are busy; more get
    /// 429 at once, and a waiting call gets 429 when its deadline passes. Default 64.
    pub max_queue: u32,
}

/// The most instances one function may have.
pub const MAX_INSTANCES: u32 = 1000;
/// The longest a call may queue behind others.
pub const MAX_QUEUE: u32 = 10_000;
/// The longest an idle instance may be kept.
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(24 * 3600);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            preload: Preload::Function,
            min_warm: 0,
            max_instances: 16,
            keep_alive: Duration::from_secs(60),
            max_queue: 64,
        }
    }
}

impl Policy {
    /// Checks the ranges; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidPolicy(m));
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES {
            return bad(format!(
                "max_instances = {} is out of range 1..={MAX_INSTANCES}",
                self.max_instances
            ));
        }
        if self.min_warm > self.max_instances {
            return bad(format!(
                "min_warm = {} is above max_instances = {}",
                self.min_warm, self.max_instances
            ));
        }
        if self.max_queue > MAX_QUEUE {
            return bad(format!(
                "max_queue = {} is above {MAX_QUEUE}",
                self.max_queue
            ));
        }
        if self.keep_alive > MAX_KEEP_ALIVE {
            return bad(format!(
                "keep_alive = {} is above 24h",
                format_duration(self.keep_alive)
            ));
        }
        Ok(())
    }

    /// Applies the fields present in a JSON object (a `PATCH`), validating the result.
    pub fn patched(&self, changes: &serde_json::Value) -> Result<Policy> {
        let mut merged = serde_json::to_value(self).map_err(|e| Error::Internal(e.into()))?;
        let Some(changes) = changes.as_object() else {
            return Err(Error::InvalidPolicy(
                "expected a JSON object of policy fields".into(),
            ));
        };
        for (key, value) in changes {
            merged[key] = value.clone();
        }
        let policy: Policy =
            serde_json::from_value(merged).map_err(|e| Error::InvalidPolicy(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }
}

/// Parses `"60s"`, `"500ms"`, `"5m"`, `"1h"` (a bare number is seconds).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60s, 500ms or 5m"))?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}, use ms, s, m or h"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

fn write_duration<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn read_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Seconds(u64),
    }
    match Text::deserialize(d)? {
        Text::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        Text::Seconds(s) => Ok(Duration::from_secs(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, ms) in [
            ("60s", 60_000),
            ("500ms", 500),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("2", 2000),
        ] {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(ms),
                "{text}"
            );
        }
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
    }

    #[test]
    fn policy_json_and_toml_forms() {
        let p: Policy = serde_json::from_str(r#"{"preload":"none","keep_alive":"1s"}"#).unwrap();
        assert_eq!(p.preload, Preload::None);
        assert_eq!(p.keep_alive, Duration::from_secs(1));
        assert_eq!(p.max_instances, 16);
        let text = serde_json::to_string(&Policy::default()).unwrap();
        assert!(text.contains(r#""keep_alive":"60s""#), "{text}");
        assert!(serde_json::from_str::<Policy>(r#"{"warmth":3}"#).is_err());
    }

    #[test]
    fn patches_merge_and_validate() {
        let base = Policy::default();
        let p = base
            .patched(&serde_json::json!({"min_warm": 2, "preload": "function"}))
            .unwrap();
        assert_eq!(p.min_warm, 2);
        assert_eq!(p.max_instances, 16);
        assert!(base.patched(&serde_json::json!({"min_warm": 99})).is_err());
        assert!(
            base.patched(&serde_json::json!({"max_instances": 0}))
                .is_err()
        );
        assert!(base.patched(&serde_json::json!([1])).is_err());
    }
}
