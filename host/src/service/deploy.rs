//! Deploys, configuration and policy changes and deletes of functions: each a new
//! stored version (or a changed one) and the registry and pools brought in line, under
//! one lock so versions are assigned in request order.
//!
//! A change of configuration (variables, secrets, allow-list) makes a new version with
//! the same bundle: the pool of the old version drains, so no instance ever runs with
//! stale values, and the version history says when each configuration came in. A
//! policy change, which says how many instances to keep and not what is in them,
//! changes the versions in place.

use bytes::Bytes;
use newt_runtime::{AllowList, FunctionSpec, Limits, Policy, PoolStats};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{FunctionConfig, Service, ServiceResult};
use crate::api::error::{ApiError, is_disk_full};

/// What a deploy that found the disk full did not do (the 507's message).
const NOT_DEPLOYED: &str = "the new version could not be stored, so this deploy changed \
    nothing and the function's previous version, if any, keeps serving";
/// What a configuration change that found the disk full did not do.
const NOT_CONFIGURED: &str = "the new version could not be stored, so this change did \
    nothing and the function's current version keeps serving";
use crate::secrets;
use crate::store::{FunctionVersion, SealedSecrets, VersionStatus};

/// Checks a function name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(name: &str) -> ServiceResult<()> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid function name {:?}: use 1 to 63 characters of a-z, 0-9 and '-', \
             starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// What a deploy asks for.
#[derive(Debug)]
pub struct DeployRequest {
    /// The runtime (default wasm).
    pub runtime: String,
    /// Per-call limits.
    pub limits: Limits,
    /// Policy fields overriding the runtime's; `None` keeps the previous version's.
    pub policy: Option<serde_json::Map<String, Value>>,
    /// Answer only when a background build has ended.
    pub wait: bool,
    /// Changes to the previous version's variables, secrets and allow-list (a
    /// redeploy keeps them otherwise).
    pub config: ConfigChange,
}

/// Changes to a function's configuration, as a deploy or a `PATCH` asks for them.
/// Its `Debug` shows secret names only.
#[derive(Clone, Default, PartialEq)]
pub struct ConfigChange {
    /// Variables to set.
    pub env: BTreeMap<String, String>,
    /// Secrets to set, in the clear until sealed.
    pub secrets: BTreeMap<String, String>,
    /// Variables or secrets to remove.
    pub unset: Vec<String>,
    /// The new allow-list, replacing the old one; `None` keeps it.
    pub allow_outbound: Option<Vec<String>>,
}

impl std::fmt::Debug for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigChange")
            .field("env", &self.env)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("unset", &self.unset)
            .field("allow_outbound", &self.allow_outbound)
            .finish()
    }
}

/// A function's configuration after a change: what a version stores.
struct Configured {
    env: BTreeMap<String, String>,
    secrets: SealedSecrets,
    allow_outbound: Vec<String>,
}

impl ConfigChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.secrets.is_empty()
            && self.unset.is_empty()
            && self.allow_outbound.is_none()
    }

    /// Checks what can be checked without the previous version: names, values, a
    /// name given twice, the allow-list. A 400 names the culprit, never a value.
    pub fn check(&self) -> ServiceResult<()> {
        let bad = ApiError::BadRequest;
        for (name, value) in self.env.iter().chain(&self.secrets) {
            secrets::check_name(name).map_err(bad)?;
            secrets::check_value(name, value).map_err(bad)?;
        }
        for name in &self.unset {
            secrets::check_name(name).map_err(bad)?;
        }
        if let Some(name) = self.env.keys().find(|n| self.secrets.contains_key(*n)) {
            return Err(bad(format!(
                "{name} is given both as a variable and as a secret"
            )));
        }
        if let Some(list) = &self.allow_outbound {
            AllowList::parse(list).map_err(|e| bad(format!("invalid allow_outbound: {e}")))?;
        }
        Ok(())
    }

    /// The configuration of `function` after this change to `previous`'s (none for a
    /// new function). New secrets are sealed; one set again to the value it has keeps
    /// its sealed text, so a change that changes nothing is seen as such.
    fn apply(
        &self,
        function: &str,
        previous: Option<&FunctionVersion>,
        keys: &secrets::SecretKeys,
    ) -> ServiceResult<Configured> {
        self.check()?;
        let (mut env, mut sealed, mut allow_outbound) = match previous {
            Some(v) => {
                let config = FunctionConfig::of(v);
                (config.env, v.secrets.clone(), config.allow_outbound)
            }
            None => Default::default(),
        };
        for name in &self.unset {
            env.remove(name);
            sealed.0.remove(name);
        }
        for (name, value) in &self.env {
            sealed.0.remove(name);
            env.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.secrets {
            env.remove(name);
            let unchanged = sealed
                .0
                .get(name)
                .and_then(|old| keys.open(function, name, old).ok())
                .is_some_and(|old| old == *value);
            if !unchanged {
                let text = keys
                    .seal(function, name, value)
                    .map_err(|e| anyhow::anyhow!("sealing secret {name}: {e:#}"))?;
                sealed.0.insert(name.clone(), text);
            }
        }
        if let Some(list) = &self.allow_outbound {
            // Stored as the list prints its entries: one spelling per destination.
            allow_outbound = AllowList::parse(list)
                .map_err(|e| ApiError::BadRequest(format!("invalid allow_outbound: {e}")))?
                .entries();
        }
        secrets::check_all(&env, sealed.0.keys().map(String::as_str))
            .map_err(ApiError::BadRequest)?;
        // Secrets kept from the previous version must open (the host key may have
        // changed since): a version that could never be served is not made.
        keys.open_all(function, &sealed)
            .map_err(|e| ApiError::Conflict(format!("{e:#}")))?;
        Ok(Configured {
            env,
            secrets: sealed,
            allow_outbound,
        })
    }
}

/// How a deploy ended.
#[derive(Debug)]
pub enum Deployed {
    /// A new version, ready to run (201).
    Created(FunctionVersion),
    /// The same bundle, runtime and config as the newest version: nothing changed (200).
    Unchanged(FunctionVersion),
    /// A new version whose build runs in the background (202, `pending`).
    Accepted(FunctionVersion),
}

impl Deployed {
    /// The version the deploy left.
    pub fn version(&self) -> &FunctionVersion {
        match self {
            Deployed::Created(v) | Deployed::Unchanged(v) | Deployed::Accepted(v) => v,
        }
    }
}

/// A function with everything `GET /v1/functions/{name}` shows.
#[derive(Debug)]
pub struct FunctionDetail {
    /// The newest version.
    pub newest: FunctionVersion,
    /// The policy in force.
    pub policy: Policy,
    /// The fields the function overrides over its runtime's policy.
    pub overrides: serde_json::Map<String, Value>,
    /// Its pool, if it has one.
    pub pool: Option<PoolStats>,
    /// Every version, newest first.
    pub versions: Vec<FunctionVersion>,
    /// The progress of the newest version's image build, while it runs.
    pub build: Option<newt_runtime::BuildProgress>,
}

impl Service {
    /// The newest version of `name`, or 404.
    pub fn newest(&self, name: &str) -> ServiceResult<FunctionVersion> {
        validate_name(name)?;
        self.registry
            .newest(name)
            .ok_or_else(|| ApiError::NotFound(format!("function `{name}` does not exist")))
    }

    /// Stores a bundle and makes it the newest version of `name`.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        request: DeployRequest,
        bundle: Bytes,
    ) -> ServiceResult<Deployed> {
        validate_name(name)?;
        request.limits.validate()?;
        request.config.check()?;
        let DeployRequest {
            runtime,
            limits,
            policy,
            wait,
            config: change,
        } = request;
        if bundle.is_empty() {
            return Err(ApiError::BadRequest(
                "the bundle is empty: send the .wasm file (or the .tar.gz / .zip for a \
                 container runtime) as the body"
                    .into(),
            ));
        }
        // Refuse what can never run now (400, 422, 503), not after a 202.
        self.invoker
            .check_bundle(&runtime, &bundle)
            .await
            .map_err(|e| self.unknown_runtime(e))?;
        let in_background = self.invoker.prepares_in_background(&runtime)?;

        let cas = self.invoker.cas().clone();
        let size = bundle.len() as i64;
        let digest = tokio::task::spawn_blocking(move || cas.put(&bundle))
            .await
            .map_err(|e| anyhow::anyhow!("storing the bundle: {e}"))?
            .map_err(|e| match is_disk_full(&e) {
                true => ApiError::disk_full(NOT_DEPLOYED, &e),
                false => e.into(),
            })?;
        // Compile (wasm) before taking the deploy lock: a slow or hostile module must
        // not hold up other deploys, and one that cannot run never becomes a version.
        let overrides = |previous: Option<&FunctionVersion>| match &policy {
            Some(policy) => policy.clone(),
            // Without policy parameters a redeploy keeps the function's overrides.
            None => previous
                .map(|v| FunctionConfig::of(v).policy)
                .unwrap_or_default(),
        };
        let resolved = self
            .registry
            .runtime_policy(&runtime)
            .patched(&Value::Object(overrides(
                self.registry.newest(name).as_ref(),
            )))?;
        if !in_background {
            let candidate = FunctionSpec {
                name: name.to_string(),
                version: 0,
                runtime: runtime.clone(),
                digest: digest.to_string(),
                limits: limits.clone(),
                policy: resolved,
                env: Default::default(),
                allow_outbound: Default::default(),
            };
            self.invoker.validate(&candidate).await?;
        }

        let guard = self.deploy_lock.lock().await;
        let previous = self.registry.newest(name);
        let policy = overrides(previous.as_ref());
        // Checked again: a PATCH of the runtime may have happened meanwhile.
        self.registry
            .runtime_policy(&runtime)
            .patched(&Value::Object(policy.clone()))?;
        let configured = change.apply(name, previous.as_ref(), self.registry.keys())?;
        let wanted = FunctionConfig {
            limits,
            policy,
            env: configured.env,
            allow_outbound: configured.allow_outbound,
        };
        if let Some(existing) = previous
            && existing.digest == digest.as_str()
            && existing.runtime == runtime
            && existing.status != VersionStatus::Failed
            && FunctionConfig::of(&existing) == wanted
            && existing.secrets == configured.secrets
            // After a rollback set it aside, the same bundle again is a new version,
            // which serves (a roll forward).
            && !self.newest_set_aside(name)
        {
            return Ok(Deployed::Unchanged(existing));
        }

        let status = if in_background {
            VersionStatus::Pending
        } else {
            VersionStatus::Ready
        };
        let config = serde_json::to_value(&wanted).map_err(anyhow::Error::from)?;
        let version = self
            .store
            .add_version(
                name,
                &runtime,
                digest.as_str(),
                size,
                &config,
                &configured.secrets,
                status,
            )
            .await
            .map_err(|e| match is_disk_full(e.as_ref()) {
                true => ApiError::disk_full(NOT_DEPLOYED, &e),
                false => e.into(),
            })?;
        let spec = self.registry.set_newest(version.clone());
        drop(guard);
        tracing::info!(function = %name, version = version.version, %digest, runtime, "deployed");
        if let Some(spec) = spec {
            self.apply(spec);
            return Ok(Deployed::Created(version));
        }
        if wait {
            let built = self.build_version(version).await;
            return match built.status {
                VersionStatus::Ready => Ok(Deployed::Created(built)),
                _ => Err(ApiError::InvalidBundle(
                    built
                        .status_message
                        .unwrap_or_else(|| "the build failed".into()),
                )),
            };
        }
        let service = self.clone();
        let building = version.clone();
        tokio::spawn(async move { service.build_version(building).await });
        Ok(Deployed::Accepted(version))
    }

    /// An unknown runtime's error names the runtimes there are.
    fn unknown_runtime(&self, e: newt_runtime::Error) -> ApiError {
        match e {
            newt_runtime::Error::UnknownRuntime(runtime) => ApiError::BadRequest(format!(
                "unknown runtime `{runtime}`: use one of: {}",
                self.invoker.runtime_names().join(", ")
            )),
            other => other.into(),
        }
    }

    /// Builds a pending version (an image) and records `ready` or `failed` with the
    /// reason. Preparing installs the version's pool too, so its first call does not
    /// pay for the image checks and unpacking again.
    pub(super) async fn build_version(
        self: &Arc<Self>,
        version: FunctionVersion,
    ) -> FunctionVersion {
        let spec = match self.registry.resolve(&version) {
            Ok(spec) => spec,
            Err(e) => {
                // Only when the host key changed since the version was made.
                let message = format!("{e:#}");
                tracing::error!(function = %version.name, version = version.version,
                    "cannot build: {message}");
                if let Err(e) = self
                    .store
                    .set_version_status(
                        &version.name,
                        version.version,
                        VersionStatus::Failed,
                        Some(&message),
                    )
                    .await
                {
                    tracing::error!(function = %version.name,
                        "could not record the build status: {e:#}");
                }
                let mut version = version;
                version.status = VersionStatus::Failed;
                version.status_message = Some(message);
                return version;
            }
        };
        let started = std::time::Instant::now();
        let built = self.invoker.preload(&spec).await;
        if built.is_err() && self.is_stopping() {
            // Likely cut off by the shutdown (its container removed): the version
            // stays `pending`, and the next start builds it again.
            tracing::info!(function = %version.name, version = version.version,
                "build stopped by the shutdown; the next start builds it again");
            return version;
        }
        let (status, message) = match &built {
            Ok(()) => (VersionStatus::Ready, None),
            Err(e) => (VersionStatus::Failed, Some(e.to_string())),
        };
        tracing::info!(
            function = %version.name,
            version = version.version,
            status = status.as_str(),
            secs = started.elapsed().as_secs_f32(),
            "build finished"
        );
        if let Err(e) = self
            .store
            .set_version_status(&version.name, version.version, status, message.as_deref())
            .await
        {
            tracing::error!(function = %version.name, "could not record the build status: {e:#}");
        }
        let mut version = version;
        version.status = status;
        version.status_message = message;
        // Only if no newer deploy or delete happened meanwhile.
        let guard = self.deploy_lock.lock().await;
        let serving = self.registry.finish_build(version.clone());
        drop(guard);
        if let Some(spec) = serving {
            self.apply(spec);
        }
        version
    }

    /// Sets policy fields of a function; takes effect on the running pool at once.
    pub async fn patch_policy(
        self: &Arc<Self>,
        name: &str,
        changes: serde_json::Map<String, Value>,
    ) -> ServiceResult<FunctionDetail> {
        let guard = self.deploy_lock.lock().await;
        let newest = self.newest(name)?;
        let mut config = FunctionConfig::of(&newest);
        config.policy.extend(changes);
        self.registry
            .runtime_policy(&newest.runtime)
            .patched(&Value::Object(config.policy.clone()))?;
        // The newest version and the one serving calls (they differ while a build
        // runs): each takes the new policy and keeps the rest of its own config.
        let mut versions = vec![newest];
        if let Some(Some(served)) = self.registry.get(name).map(|e| e.serving)
            && served.version.version != versions[0].version
        {
            versions.push(served.version);
        }
        let mut values = Vec::new();
        for version in &versions {
            let mut own = FunctionConfig::of(version);
            own.policy = config.policy.clone();
            let value = serde_json::to_value(&own).map_err(anyhow::Error::from)?;
            self.store
                .set_version_config(name, version.version, &value)
                .await?;
            values.push(value);
        }
        let spec = self
            .registry
            .set_config(name, &values[0], &values[values.len() - 1]);
        drop(guard);
        if let Some(spec) = spec {
            self.apply(spec);
        }
        self.function(name).await
    }

    /// Changes a function's variables, secrets or allow-list (and with them, policy
    /// fields): a new version of the same bundle, serving before this returns, so the
    /// next call runs with the new configuration. For a container function that
    /// means its image is looked up (the same bundle and runtime: no rebuild) and the
    /// old version's containers drain.
    pub async fn change_config(
        self: &Arc<Self>,
        name: &str,
        change: ConfigChange,
        policy_changes: serde_json::Map<String, Value>,
    ) -> ServiceResult<FunctionDetail> {
        change.check()?;
        let guard = self.deploy_lock.lock().await;
        let mut newest = self.newest(name)?;
        // After a rollback the change applies to the version serving, not to the
        // newer one it set aside.
        if self.newest_set_aside(name)
            && let Some(Some(served)) = self.registry.get(name).map(|e| e.serving)
        {
            newest = served.version;
        }
        let mut config = FunctionConfig::of(&newest);
        config.policy.extend(policy_changes);
        self.registry
            .runtime_policy(&newest.runtime)
            .patched(&Value::Object(config.policy.clone()))?;
        let configured = change.apply(name, Some(&newest), self.registry.keys())?;
        config.env = configured.env;
        config.allow_outbound = configured.allow_outbound;
        if config == FunctionConfig::of(&newest) && configured.secrets == newest.secrets {
            drop(guard);
            return self.function(name).await;
        }
        let status = match self.invoker.prepares_in_background(&newest.runtime)? {
            true => VersionStatus::Pending,
            // A wasm module: compiled for the version it comes from, in the cache.
            false => VersionStatus::Ready,
        };
        let value = serde_json::to_value(&config).map_err(anyhow::Error::from)?;
        let version = self
            .store
            .add_version(
                name,
                &newest.runtime,
                &newest.digest,
                newest.size,
                &value,
                &configured.secrets,
                status,
            )
            .await
            .map_err(|e| match is_disk_full(e.as_ref()) {
                true => ApiError::disk_full(NOT_CONFIGURED, &e),
                false => e.into(),
            })?;
        let spec = self.registry.set_newest(version.clone());
        drop(guard);
        // Names only: the values are the function's business.
        tracing::info!(function = %name, version = version.version,
            env = ?config.env.keys().collect::<Vec<_>>(),
            secrets = ?configured.secrets,
            allow_outbound = ?config.allow_outbound,
            "configuration changed");
        if let Some(spec) = spec {
            self.apply(spec);
        } else if status == VersionStatus::Pending {
            let built = self.build_version(version).await;
            if built.status != VersionStatus::Ready {
                return Err(ApiError::InvalidBundle(format!(
                    "the new version could not be made ready: {}",
                    built
                        .status_message
                        .unwrap_or_else(|| "the build failed".into())
                )));
            }
        }
        self.function(name).await
    }

    /// A function with its policy, pool and versions.
    pub async fn function(&self, name: &str) -> ServiceResult<FunctionDetail> {
        let newest = self.newest(name)?;
        let versions = self.store.versions(name).await?;
        let build = (newest.status == VersionStatus::Pending)
            .then(|| self.builds.get()?.get(name, newest.version))
            .flatten();
        Ok(FunctionDetail {
            build,
            policy: self.registry.policy_of(&newest),
            overrides: FunctionConfig::of(&newest).policy,
            pool: self.invoker.pool(name),
            newest,
            versions,
        })
    }

    /// Removes a function; its call records are kept.
    pub async fn delete(&self, name: &str) -> ServiceResult<()> {
        self.newest(name)?;
        let _guard = self.deploy_lock.lock().await;
        self.store.delete_function(name).await?;
        self.registry.remove(name);
        self.invoker.remove(name);
        tracing::info!(function = %name, "deleted");
        Ok(())
    }
}
