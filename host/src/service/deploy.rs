//! Deploys, policy changes and deletes of functions: each a new stored version (or a
//! changed one) and the registry and pools brought in line, under one lock so
//! versions are assigned in request order.

use bytes::Bytes;
use newt_runtime::{FunctionSpec, Limits, Policy, PoolStats};
use serde_json::Value;
use std::sync::Arc;

use super::{FunctionConfig, Service, ServiceResult};
use crate::api::error::{ApiError, is_disk_full};

/// What a deploy that found the disk full did not do (the 507's message).
const NOT_DEPLOYED: &str = "the new version could not be stored, so this deploy changed \
    nothing and the function's previous version, if any, keeps serving";
use crate::store::{FunctionVersion, VersionStatus};

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
        let DeployRequest {
            runtime,
            limits,
            policy,
            wait,
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
        let wanted = FunctionConfig { limits, policy };
        if let Some(existing) = previous
            && existing.digest == digest.as_str()
            && existing.runtime == runtime
            && existing.status != VersionStatus::Failed
            && FunctionConfig::of(&existing) == wanted
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
            .add_version(name, &runtime, digest.as_str(), size, &config, status)
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
        let spec = self.registry.resolve(&version);
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
        let value = serde_json::to_value(&config).map_err(anyhow::Error::from)?;
        // The newest version and the one serving calls (they differ while a build runs).
        let mut versions = vec![newest.version];
        if let Some(Some(served)) = self.registry.get(name).map(|e| e.serving)
            && served.version.version != newest.version
        {
            versions.push(served.version.version);
        }
        for version in versions {
            self.store.set_version_config(name, version, &value).await?;
        }
        let spec = self.registry.set_config(name, &value);
        drop(guard);
        if let Some(spec) = spec {
            self.apply(spec);
        }
        self.function(name).await
    }

    /// A function with its policy, pool and versions.
    pub async fn function(&self, name: &str) -> ServiceResult<FunctionDetail> {
        let newest = self.newest(name)?;
        let versions = self.store.versions(name).await?;
        Ok(FunctionDetail {
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
