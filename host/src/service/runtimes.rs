//! Runtimes: registering container runtimes and setting any runtime's policy
//! (`wasm` included). The definitions live in the invoker's executors; the policies
//! in the registry; both are saved in the store.

use newt_runtime::{ContainerRuntime, Policy};
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Service, ServiceResult, WASM_RUNTIME};
use crate::api::error::ApiError;

fn is_builtin(name: &str) -> bool {
    name == WASM_RUNTIME || name == ContainerRuntime::builtin_python().name
}

impl Service {
    /// Registers (or replaces) a container runtime after checking its image is on the
    /// engine.
    pub async fn register_runtime(
        &self,
        runtime: ContainerRuntime,
    ) -> ServiceResult<ContainerRuntime> {
        runtime.validate()?;
        if is_builtin(&runtime.name) {
            return Err(ApiError::Conflict(format!(
                "`{}` is a built-in runtime and cannot be replaced: register under another name",
                runtime.name
            )));
        }
        self.invoker.register_runtime(runtime.clone(), true).await?;
        let definition = serde_json::to_value(&runtime).map_err(anyhow::Error::from)?;
        self.store.put_runtime(&runtime.name, &definition).await?;
        let policy = runtime.policy.clone().unwrap_or_default();
        self.invoker.set_runtime_policy(&runtime.name, &policy);
        self.registry.set_runtime_policy(&runtime.name, policy);
        tracing::info!(runtime = %runtime.name, image = %runtime.image, "runtime registered");
        Ok(runtime)
    }

    /// Every runtime: `wasm` (no definition) and the container runtimes.
    pub fn runtimes(&self) -> Vec<(String, Option<ContainerRuntime>, Policy)> {
        let mut all = vec![(
            WASM_RUNTIME.to_string(),
            None,
            self.registry.runtime_policy(WASM_RUNTIME),
        )];
        all.extend(self.invoker.runtimes().into_iter().map(|r| {
            let policy = self.registry.runtime_policy(&r.name);
            (r.name.clone(), Some(r), policy)
        }));
        all
    }

    /// One container runtime, or 404.
    pub fn runtime(&self, name: &str) -> ServiceResult<ContainerRuntime> {
        self.invoker
            .runtime(name)
            .ok_or_else(|| ApiError::NotFound(format!("runtime `{name}` does not exist")))
    }

    /// Whether a runtime is built in.
    pub fn is_builtin_runtime(&self, name: &str) -> bool {
        is_builtin(name)
    }

    /// Sets policy fields of a runtime; its functions follow at once, except for the
    /// fields each overrides.
    pub async fn patch_runtime_policy(
        self: &Arc<Self>,
        name: &str,
        changes: serde_json::Map<String, Value>,
    ) -> ServiceResult<Policy> {
        let runtime = if name == WASM_RUNTIME {
            None
        } else {
            Some(self.runtime(name)?)
        };
        let policy = self
            .registry
            .runtime_policy(name)
            .patched(&Value::Object(changes))?;
        let definition = match runtime {
            Some(mut runtime) => {
                runtime.policy = Some(policy.clone());
                serde_json::to_value(&runtime).map_err(anyhow::Error::from)?
            }
            None => json!({ "name": WASM_RUNTIME, "policy": policy }),
        };
        self.store.put_runtime(name, &definition).await?;
        self.invoker.set_runtime_policy(name, &policy);
        for spec in self.registry.set_runtime_policy(name, policy.clone()) {
            self.apply(spec);
        }
        Ok(policy)
    }

    /// Removes a container runtime; refused while functions use it.
    pub async fn delete_runtime(&self, name: &str) -> ServiceResult<()> {
        self.runtime(name)?;
        if is_builtin(name) {
            return Err(ApiError::Conflict(format!(
                "`{name}` is built in and cannot be removed"
            )));
        }
        let users = self.registry.users_of(name);
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "runtime `{name}` is used by {}: delete those functions first",
                users.join(", ")
            )));
        }
        self.store.delete_runtime(name).await?;
        self.invoker.remove_runtime(name).await;
        self.registry.remove_runtime(name);
        Ok(())
    }
}
