//! Versions, aliases and rollbacks: which version of a function a call runs.
//!
//! Every deploy (and configuration change) is a new, immutable version. Calls of
//! `FN` run the serving version: the newest ready version that no rollback set
//! aside. A call may name another one: `FN@3` runs version 3, `FN:prod` runs a
//! version of the alias `prod`, picked at random by the alias's weights for each
//! call (`prod -> 3 90%, 4 10%`). The version a call ran is in its record.
//!
//! A rollback (`newt rollback FN [--to N]`) makes an older ready version the serving
//! one at once, in the registry and the engine (its pool becomes the function's
//! pool; the abandoned version's drains). It is stored as the set of versions it set
//! aside: every ready version newer than the one rolled back to. So a restart serves
//! the same version, and a new deploy, never set aside, serves itself.

use newt_runtime::{FunctionSpec, PoolStats};
use std::collections::BTreeSet;
use std::sync::Arc;

use super::registry::VersionLookup;
use super::{Service, ServiceResult, now_ms, validate_name};
use crate::api::error::ApiError;
use crate::store::{AliasTarget, FunctionVersion, StoredAlias, VersionStatus};

/// The most versions one alias may split its calls between.
pub const MAX_ALIAS_TARGETS: usize = 16;

/// Which version of a function a call asks for, beside the serving one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A version by number (`FN@3`).
    Version(i64),
    /// A version of an alias (`FN:prod`).
    Alias(String),
}

/// Splits a call's name into the function and the version it asks for: `FN@3`,
/// `FN:prod`; `None` for a plain function name (the serving version).
pub fn split_target(name: &str) -> ServiceResult<Option<(&str, Target)>> {
    let Some(at) = name.find(['@', ':']) else {
        return Ok(None);
    };
    let (function, rest) = (&name[..at], &name[at + 1..]);
    validate_name(function)?;
    let target = match name.as_bytes()[at] {
        b'@' => Target::Version(parse_version(rest)?),
        _ => {
            if rest.parse::<i64>().is_ok() {
                return Err(ApiError::BadRequest(format!(
                    "`{function}:{rest}` names an alias, and aliases are never numbers: \
                     call version {rest} as `{function}@{rest}`"
                )));
            }
            validate_alias(rest)?;
            Target::Alias(rest.to_string())
        }
    };
    Ok(Some((function, target)))
}

/// A version number as a caller writes it: a whole number from 1.
pub fn parse_version(text: &str) -> ServiceResult<i64> {
    text.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "invalid version {:?}: versions are whole numbers from 1 (see newt versions FN)",
            text.chars().take(40).collect::<String>()
        ))
    })
}

/// Checks an alias name: a function name (`[a-z0-9][a-z0-9-]{0,62}`) that is not a
/// number, so `FN:NAME` and `FN@N` can never be confused.
pub fn validate_alias(alias: &str) -> ServiceResult<()> {
    validate_name(alias).map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid alias {:?}: use 1 to 63 characters of a-z, 0-9 and '-', starting \
             with a letter or digit",
            alias.chars().take(80).collect::<String>()
        ))
    })?;
    if alias.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "invalid alias {alias:?}: an alias may not be a number (FN@{alias} already \
             means version {alias})"
        )));
    }
    Ok(())
}

/// A function's versions, as `GET /v1/functions/{name}/versions` shows them.
#[derive(Debug)]
pub struct VersionsDetail {
    /// The function.
    pub function: String,
    /// The version plain calls run, if any.
    pub serving: Option<i64>,
    /// Every live version, newest first.
    pub versions: Vec<VersionInfo>,
    /// The function's aliases, by name.
    pub aliases: Vec<StoredAlias>,
}

/// One version and what points at it.
#[derive(Debug)]
pub struct VersionInfo {
    /// The stored version.
    pub version: FunctionVersion,
    /// Whether plain calls run it.
    pub serving: bool,
    /// Whether a rollback set it aside.
    pub rolled_back: bool,
    /// The aliases that point at it.
    pub aliases: Vec<String>,
    /// Its pool, if it has one (the function's pool when serving, else a pool of
    /// its own made by calls of it).
    pub pool: Option<PoolStats>,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The function.
    pub function: String,
    /// The version that served before.
    pub from: i64,
    /// The version that serves now.
    pub to: i64,
    /// The versions now set aside (ready versions newer than `to`).
    pub set_aside: Vec<i64>,
}

/// Picks one of an alias's versions: `roll` is uniform over `0..100`.
fn pick(targets: &[AliasTarget], roll: u32) -> i64 {
    let mut below = 0;
    for target in targets {
        below += target.weight;
        if roll < below {
            return target.version;
        }
    }
    // Weights sum to 100 (checked when the alias was set); never reached otherwise.
    targets.last().map_or(0, |t| t.version)
}

/// A number uniform over `0..100`, from the random bits of a v7 UUID (`fast-rng`:
/// a thread-local CSPRNG), so no other random crate is needed.
fn roll_percent() -> u32 {
    let random = uuid::Uuid::now_v7().as_u128() & ((1u128 << 62) - 1);
    (random % 100) as u32
}

impl Service {
    /// The spec a call of `function` at `target` runs, or why it cannot run.
    pub(super) fn target_spec(
        &self,
        function: &str,
        target: &Target,
    ) -> ServiceResult<Arc<FunctionSpec>> {
        let number = match target {
            Target::Version(number) => *number,
            Target::Alias(alias) => {
                let found = self.registry.alias(function, alias);
                let Some(found) = found else {
                    self.newest(function)?;
                    return Err(ApiError::NotFound(format!(
                        "function `{function}` has no alias `{alias}`: see newt alias list \
                         {function}"
                    )));
                };
                pick(&found.targets, roll_percent())
            }
        };
        match self.registry.version_spec(function, number) {
            VersionLookup::Runnable(spec) => Ok(spec),
            VersionLookup::Unknown => {
                self.newest(function)?;
                Err(ApiError::NotFound(format!(
                    "function `{function}` has no version {number}: see newt versions {function}"
                )))
            }
            VersionLookup::NotReady(version) => Err(not_ready(&version)),
            VersionLookup::Unresolvable(why) => Err(ApiError::Conflict(format!(
                "version {number} of `{function}` cannot run: {why}"
            ))),
        }
    }

    /// Every live version of `name`, with what serves, what a rollback set aside,
    /// the aliases and the pools.
    pub fn versions_of(&self, name: &str) -> ServiceResult<VersionsDetail> {
        self.newest(name)?;
        let entry = self
            .registry
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("function `{name}` does not exist")))?;
        let serving = entry.serving.as_ref().map(|s| s.version.version);
        let serving_pool = self
            .invoker
            .pool(name)
            .filter(|p| Some(p.version) == serving);
        let side_pools = self.invoker.side_pools(name);
        let versions = entry
            .versions
            .values()
            .rev()
            .map(|version| {
                let number = version.version;
                let pool = match Some(number) == serving {
                    true => serving_pool.clone(),
                    false => side_pools.iter().find(|p| p.version == number).cloned(),
                };
                VersionInfo {
                    serving: Some(number) == serving,
                    rolled_back: entry.rolled_back.contains(&number),
                    aliases: entry
                        .aliases
                        .values()
                        .filter(|a| a.targets.iter().any(|t| t.version == number))
                        .map(|a| a.alias.clone())
                        .collect(),
                    pool,
                    version: version.clone(),
                }
            })
            .collect();
        Ok(VersionsDetail {
            function: name.to_string(),
            serving,
            versions,
            aliases: entry.aliases.values().cloned().collect(),
        })
    }

    /// The aliases of `name`, by name.
    pub fn aliases_of(&self, name: &str) -> ServiceResult<Vec<StoredAlias>> {
        self.newest(name)?;
        Ok(self
            .registry
            .get(name)
            .map(|entry| entry.aliases.into_values().collect())
            .unwrap_or_default())
    }

    /// Points alias `alias` of `name` at `targets` (version and weight); every
    /// version must be a ready version of the function and the weights whole
    /// percents summing to 100. Returns the alias and whether it is new.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        mut targets: Vec<AliasTarget>,
    ) -> ServiceResult<(StoredAlias, bool)> {
        validate_alias(alias)?;
        check_weights(&targets)?;
        targets.sort_by_key(|t| t.version);
        let _guard = self.deploy_lock.lock().await;
        self.newest(name)?;
        for target in &targets {
            match self.registry.version_spec(name, target.version) {
                VersionLookup::Runnable(_) => {}
                VersionLookup::Unknown => {
                    return Err(ApiError::NotFound(format!(
                        "function `{name}` has no version {}: an alias points at ready \
                         versions only (see newt versions {name})",
                        target.version
                    )));
                }
                VersionLookup::NotReady(version) => {
                    return Err(ApiError::Conflict(format!(
                        "{}; an alias points at ready versions only",
                        not_ready_text(&version)
                    )));
                }
                VersionLookup::Unresolvable(why) => {
                    return Err(ApiError::Conflict(format!(
                        "version {} of `{name}` cannot run: {why}",
                        target.version
                    )));
                }
            }
        }
        let stored = StoredAlias {
            function: name.to_string(),
            alias: alias.to_string(),
            targets,
            updated_at: now_ms(),
        };
        let created = self.store.put_alias(&stored).await?;
        self.registry.set_alias(stored.clone());
        tracing::info!(function = %name, alias, targets = ?stored.targets, "alias set");
        Ok((stored, created))
    }

    /// Removes an alias of `name`.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> ServiceResult<()> {
        validate_alias(alias)?;
        let _guard = self.deploy_lock.lock().await;
        self.newest(name)?;
        if self.registry.alias(name, alias).is_none() {
            return Err(ApiError::NotFound(format!(
                "function `{name}` has no alias `{alias}`"
            )));
        }
        self.store.delete_alias(name, alias).await?;
        self.registry.remove_alias(name, alias);
        tracing::info!(function = %name, alias, "alias removed");
        Ok(())
    }

    /// Rolls `name` back to version `to`, or (`None`) to the newest ready version
    /// older than the serving one: it serves at once, in the registry and the
    /// engine, its pool is prepared (and fills to its `min_warm`), and the pool of
    /// the version it replaces drains. Durable before this returns.
    pub async fn roll_back(
        self: &Arc<Self>,
        name: &str,
        to: Option<i64>,
    ) -> ServiceResult<RolledBack> {
        let guard = self.deploy_lock.lock().await;
        self.newest(name)?;
        let entry = self
            .registry
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("function `{name}` does not exist")))?;
        let Some(from) = entry.serving.as_ref().map(|s| s.version.version) else {
            return Err(ApiError::Conflict(format!(
                "function `{name}` has no serving version to roll back from: its versions \
                 are building or failed (see newt versions {name})"
            )));
        };
        let ready: BTreeSet<i64> = entry
            .versions
            .values()
            .filter(|v| v.status == VersionStatus::Ready)
            .map(|v| v.version)
            .collect();
        let to = match to {
            Some(number) => {
                let version = entry.versions.get(&number).ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "function `{name}` has no version {number}: see newt versions {name}"
                    ))
                })?;
                if version.status != VersionStatus::Ready {
                    return Err(ApiError::Conflict(format!(
                        "{}; only a ready version can serve",
                        not_ready_text(version)
                    )));
                }
                if number == from {
                    return Err(ApiError::Conflict(format!(
                        "version {number} of `{name}` is already the serving version"
                    )));
                }
                number
            }
            None => ready.range(..from).next_back().copied().ok_or_else(|| {
                ApiError::Conflict(format!(
                    "version {from} of `{name}` is its oldest ready version: there is no \
                     earlier ready version to roll back to"
                ))
            })?,
        };
        let version = entry.versions[&to].clone();
        let set_aside: Vec<i64> = ready.range(to + 1..).copied().collect();
        // Resolved before anything is stored: a version whose secrets no longer open
        // is refused, and nothing changes.
        self.registry.resolve(&version).map_err(|e| {
            ApiError::Conflict(format!("version {to} of `{name}` cannot serve: {e:#}"))
        })?;
        self.store.roll_back(name, to, &set_aside).await?;
        let spec = self
            .registry
            .roll_back(name, &version, &set_aside)
            .map_err(|e| ApiError::Conflict(format!("{e:#}")))?;
        drop(guard);
        tracing::info!(function = %name, from, to, set_aside = ?set_aside, "rolled back");
        self.apply(spec.clone());
        // Prepared before the answer: the next call does not load it.
        if let Err(e) = self.invoker.preload(&spec).await {
            tracing::warn!(function = %name, version = to,
                "rolled back, but could not prepare the pool now: {e}");
        }
        Ok(RolledBack {
            function: name.to_string(),
            from,
            to,
            set_aside,
        })
    }

    /// Whether a rollback set aside the newest version of `name`: then a redeploy
    /// of the same bundle is a new version (it serves), and a configuration change
    /// starts from the serving version, not the set-aside one.
    pub(super) fn newest_set_aside(&self, name: &str) -> bool {
        self.registry
            .get(name)
            .is_some_and(|e| e.rolled_back.contains(&e.newest.version))
    }
}

/// Checks an alias's weights: 1 to [`MAX_ALIAS_TARGETS`] versions, each with a
/// whole-percent weight from 1, summing to 100.
fn check_weights(targets: &[AliasTarget]) -> ServiceResult<()> {
    if targets.is_empty() || targets.len() > MAX_ALIAS_TARGETS {
        return Err(ApiError::BadRequest(format!(
            "an alias points at 1 to {MAX_ALIAS_TARGETS} versions, got {}",
            targets.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for target in targets {
        if target.version < 1 {
            return Err(ApiError::BadRequest(format!(
                "invalid version {}: versions are whole numbers from 1",
                target.version
            )));
        }
        if !seen.insert(target.version) {
            return Err(ApiError::BadRequest(format!(
                "version {} is given twice",
                target.version
            )));
        }
        if target.weight == 0 || target.weight > 100 {
            return Err(ApiError::BadRequest(format!(
                "the weight of version {} is {}: weights are whole percents from 1 to 100",
                target.version, target.weight
            )));
        }
    }
    let sum: u32 = targets.iter().map(|t| t.weight).sum();
    if sum != 100 {
        return Err(ApiError::BadRequest(format!(
            "the weights sum to {sum}: they must sum to 100"
        )));
    }
    Ok(())
}

/// Why a version that is not ready cannot run.
fn not_ready_text(version: &FunctionVersion) -> String {
    let (name, number) = (&version.name, version.version);
    match version.status {
        VersionStatus::Pending => format!("version {number} of `{name}` is still being built"),
        _ => format!(
            "version {number} of `{name}` failed to build ({})",
            version
                .status_message
                .as_deref()
                .unwrap_or("see newt versions")
        ),
    }
}

/// The 409 for a call of a version that is not ready.
fn not_ready(version: &FunctionVersion) -> ApiError {
    let hint = match version.status {
        VersionStatus::Pending => "retry when newt versions says it is ready",
        _ => "it cannot run: call another version",
    };
    ApiError::Conflict(format!("{}: {hint}", not_ready_text(version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(pairs: &[(i64, u32)]) -> Vec<AliasTarget> {
        pairs
            .iter()
            .map(|&(version, weight)| AliasTarget { version, weight })
            .collect()
    }

    #[test]
    fn call_names_split_into_function_and_target() {
        assert_eq!(split_target("dice").unwrap(), None);
        assert_eq!(
            split_target("dice@3").unwrap(),
            Some(("dice", Target::Version(3)))
        );
        assert_eq!(
            split_target("dice:prod").unwrap(),
            Some(("dice", Target::Alias("prod".into())))
        );
        for bad in [
            "dice@",
            "dice@0",
            "dice@-1",
            "dice@x",
            "dice:",
            "dice:3",
            "dice:Prod",
            "@3",
            "Dice@3",
            "dice@3@4",
        ] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
        let Err(ApiError::BadRequest(err)) = split_target("dice:3") else {
            panic!("dice:3 is a bad request");
        };
        assert!(err.contains("dice@3"), "{err}");
    }

    #[test]
    fn aliases_are_function_names_that_are_not_numbers() {
        for good in ["prod", "canary-2", "v1", "0a"] {
            assert!(validate_alias(good).is_ok(), "{good}");
        }
        for bad in ["", "12", "Prod", "a:b", "a@b", &"a".repeat(64)] {
            assert!(validate_alias(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_are_whole_percents_summing_to_100() {
        assert!(check_weights(&targets(&[(3, 100)])).is_ok());
        assert!(check_weights(&targets(&[(3, 90), (4, 10)])).is_ok());
        for bad in [
            targets(&[]),
            targets(&[(3, 90)]),
            targets(&[(3, 90), (4, 20)]),
            targets(&[(3, 100), (4, 0)]),
            targets(&[(3, 50), (3, 50)]),
            targets(&[(0, 100)]),
        ] {
            assert!(check_weights(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn picks_follow_the_weights() {
        let split = targets(&[(3, 90), (4, 10)]);
        let picked: Vec<i64> = (0..100).map(|roll| pick(&split, roll)).collect();
        assert_eq!(picked.iter().filter(|v| **v == 3).count(), 90);
        assert_eq!(picked.iter().filter(|v| **v == 4).count(), 10);
        assert!((0..1000).all(|_| roll_percent() < 100));
    }
}
