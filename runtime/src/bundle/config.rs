//! `newt.toml`: a bundle's own build configuration (JinaD's workspace file).
//!
//! A container bundle may carry a small `newt.toml` at its root:
//!
//! ```toml
//! python = "3.11"                 # the Python it needs: the deploy's runtime must provide it
//! build = ["python3 gen.py"]      # extra build steps, after the requirements install
//! [env]
//! MODEL_NAME = "small"            # defaults; `newt env set` wins on a clash
//! ```
//!
//! The file comes from whoever may deploy, so it is read strictly: an unknown key is
//! refused by name, sizes are bounded, step commands are one line each, and variable
//! names follow the rules of `newt env set`. Values are plain configuration: secrets
//! belong in `newt secret set`, which seals them and never bakes them into an image.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The file's name, at the bundle's root.
pub const BUNDLE_CONFIG_FILE: &str = "newt.toml";

/// Largest `newt.toml` read: it is configuration, not data.
const MAX_FILE_BYTES: u64 = 16 * 1024;
/// Most build steps: each is a step of the image build (a container of its own).
const MAX_BUILD_STEPS: usize = 16;
/// Longest build step command.
const MAX_STEP_BYTES: usize = 1024;
/// Most `[env]` variables.
const MAX_ENV_VARS: usize = 64;
/// Longest variable name (as `newt env set`).
const MAX_NAME_BYTES: usize = 128;
/// Longest variable value.
const MAX_VALUE_BYTES: usize = 4 * 1024;
/// Prefix of the variables newt sets itself.
const RESERVED_PREFIX: &str = "NEWT_";

/// A bundle's `newt.toml`; all fields optional, the default is an empty file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// The Python version the code needs (`"3.11"`): the deploy's runtime must provide
    /// it (its `python` field), or the deploy is refused with the runtimes that do.
    #[serde(default)]
    pub python: Option<String>,
    /// Commands run at build time, in order, after the requirements install, in the
    /// runtime's `path`, as the function's user, with the build's limits and network.
    #[serde(default)]
    pub build: Vec<String>,
    /// Variables every instance of the function gets; the function's own (`newt env
    /// set`) win on a clash.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl BundleConfig {
    /// Reads `newt.toml` from an unpacked bundle in `dir`; an empty config when there
    /// is none. The unpacker made every entry a regular file or directory it created,
    /// or a link that stays inside the bundle; a link is refused here all the same.
    pub fn read(dir: &Path) -> Result<BundleConfig> {
        let path = dir.join(BUNDLE_CONFIG_FILE);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BundleConfig::default());
            }
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        if !meta.is_file() {
            return Err(Error::InvalidBundle(format!(
                "the bundle's {BUNDLE_CONFIG_FILE} is not a regular file"
            )));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(Error::InvalidBundle(format!(
                "the bundle's {BUNDLE_CONFIG_FILE} is {} bytes; the limit is {MAX_FILE_BYTES}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::InvalidBundle(format!("the bundle's {BUNDLE_CONFIG_FILE} is not UTF-8"))
        })?;
        BundleConfig::parse(&text)
    }

    /// Parses and checks the text of a `newt.toml`.
    pub fn parse(text: &str) -> Result<BundleConfig> {
        let config: BundleConfig = toml::from_str(text).map_err(|e| {
            Error::InvalidBundle(format!(
                "the bundle's {BUNDLE_CONFIG_FILE} is invalid: {}",
                e.message().trim_end()
            ))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidBundle(format!("{BUNDLE_CONFIG_FILE}: {m}")));
        if let Some(python) = &self.python {
            let mut parts = python.split('.');
            let well_formed = matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(major), Some(minor), None)
                    if is_number(major) && is_number(minor)
            );
            if !well_formed {
                return bad(format!(
                    "python must be a version such as \"3.11\", got {:?}",
                    python.chars().take(40).collect::<String>()
                ));
            }
        }
        if self.build.len() > MAX_BUILD_STEPS {
            return bad(format!(
                "build has {} steps; the limit is {MAX_BUILD_STEPS}",
                self.build.len()
            ));
        }
        for (i, step) in self.build.iter().enumerate() {
            if step.trim().is_empty() {
                return bad(format!("build step {} is empty", i + 1));
            }
            if step.len() > MAX_STEP_BYTES {
                return bad(format!(
                    "build step {} is {} bytes; the limit is {MAX_STEP_BYTES}",
                    i + 1,
                    step.len()
                ));
            }
            // One Dockerfile line each: a newline would start an instruction of its own
            // (a `USER root`, say), and a trailing backslash would swallow the next step.
            if step.chars().any(char::is_control) || step.trim_end().ends_with('\\') {
                return bad(format!(
                    "build step {} must be one line, without control characters or a \
                     trailing backslash",
                    i + 1
                ));
            }
        }
        if self.env.len() > MAX_ENV_VARS {
            return bad(format!(
                "[env] has {} variables; the limit is {MAX_ENV_VARS}",
                self.env.len()
            ));
        }
        for (name, value) in &self.env {
            check_env_name(name).or_else(bad)?;
            if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
                return bad(format!(
                    "the value of {name} must be at most {MAX_VALUE_BYTES} bytes, without NUL"
                ));
            }
        }
        Ok(())
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks an environment variable's name the way `newt env set` does: letters, digits
/// and `_`, not starting with a digit, at most 128 bytes, not `NEWT_*` (newt's own).
pub fn check_env_name(name: &str) -> std::result::Result<(), String> {
    let bytes = name.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_BYTES
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if !well_formed {
        return Err(format!(
            "invalid variable name {:?}: use up to {MAX_NAME_BYTES} letters, digits and '_', \
             not starting with a digit",
            name.chars().take(80).collect::<String>()
        ));
    }
    if name.to_ascii_uppercase().starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "variable name {name} is reserved: newt sets the NEWT_* variables itself"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_newt_toml_parses() {
        let config = BundleConfig::parse(
            "python = \"3.11\"\nbuild = [\"echo hi > built.txt\", \"python3 gen.py\"]\n\
             [env]\nMODEL = \"small\"\n_X1 = \"\"\n",
        )
        .unwrap();
        assert_eq!(config.python.as_deref(), Some("3.11"));
        assert_eq!(config.build, ["echo hi > built.txt", "python3 gen.py"]);
        assert_eq!(config.env["MODEL"], "small");
        assert_eq!(BundleConfig::parse("").unwrap(), BundleConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (text, key) in [
            ("pyhton = \"3.11\"", "pyhton"),
            ("[build]\nsteps = []", "invalid type"),
            ("[env]\nA = 1", "invalid type"),
            ("[secrets]\nA = \"x\"", "secrets"),
        ] {
            let err = BundleConfig::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("newt.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let long_step = format!("build = [\"{}\"]", "x".repeat(MAX_STEP_BYTES + 1));
        let many_steps = format!("build = [{}]", vec!["\"true\""; 17].join(","));
        let long_value = format!("[env]\nA = \"{}\"", "x".repeat(MAX_VALUE_BYTES + 1));
        for text in [
            "python = \"3\"",
            "python = \"3.11.2\"",
            "python = \"three.eleven\"",
            "build = [\"\"]",
            "build = [\"a\\nUSER root\"]",
            "build = [\"a \\\\\"]",
            long_step.as_str(),
            many_steps.as_str(),
            "[env]\n\"1A\" = \"x\"",
            "[env]\nNEWT_FUNCTION = \"x\"",
            "[env]\n\"A-B\" = \"x\"",
            "[env]\nA = \"a\\u0000b\"",
            long_value.as_str(),
        ] {
            assert!(BundleConfig::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn read_finds_the_file_or_nothing_and_bounds_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            BundleConfig::read(dir.path()).unwrap(),
            BundleConfig::default()
        );
        std::fs::write(dir.path().join(BUNDLE_CONFIG_FILE), "[env]\nA = \"1\"\n").unwrap();
        assert_eq!(BundleConfig::read(dir.path()).unwrap().env["A"], "1");
        std::fs::write(
            dir.path().join(BUNDLE_CONFIG_FILE),
            "#".repeat(MAX_FILE_BYTES as usize + 1),
        )
        .unwrap();
        let err = BundleConfig::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
    }
}
