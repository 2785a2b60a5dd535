//! The registry: the one owner of what every function is right now.
//!
//! For each function it holds the newest version (what `GET` shows) and, once one is
//! ready, the serving version with its resolved [`FunctionSpec`] (limits parsed and
//! the runtime's policy merged with the function's overrides, once per version or
//! policy change). A call reads one `Arc<FunctionSpec>` and nothing else. It also holds
//! the policy of each runtime, `wasm` included.
//!
//! Resolving a version also opens its secrets (with the host key it holds) into the
//! spec's environment, beside the version's plain variables, and parses its
//! allow-list: the spec is the only place a secret's value is kept in the clear.
//!
//! It also keeps every live version of each function (so `FN@3` resolves without the
//! store), the versions a rollback set aside, and the function's aliases. The serving
//! version is the newest ready version that no rollback set aside; a version called
//! by number or alias that is not serving gets its spec resolved on its first call
//! (with the function's policy: the serving version's overrides), kept until the
//! function or a policy changes.

use dashmap::DashMap;
use newt_runtime::{AllowList, Env, FunctionSpec, Policy};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::FunctionConfig;
use crate::secrets::SecretKeys;
use crate::store::{FunctionVersion, StoredAlias, VersionStatus};

/// What a function is right now.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The newest version, whatever its status.
    pub newest: FunctionVersion,
    /// The newest ready version no rollback set aside, which calls run, if any.
    pub serving: Option<Served>,
    /// Every live version, by number.
    pub versions: BTreeMap<i64, FunctionVersion>,
    /// The versions rollbacks set aside.
    pub rolled_back: BTreeSet<i64>,
    /// The function's aliases, by name.
    pub aliases: BTreeMap<String, StoredAlias>,
    /// Resolved specs of versions called by number or alias while not serving.
    pinned: HashMap<i64, Arc<FunctionSpec>>,
}

impl Entry {
    fn new(newest: FunctionVersion) -> Entry {
        Entry {
            versions: BTreeMap::from([(newest.version, newest.clone())]),
            newest,
            serving: None,
            rolled_back: BTreeSet::new(),
            aliases: BTreeMap::new(),
            pinned: HashMap::new(),
        }
    }
}

/// What a call of one version of a function finds.
#[derive(Debug)]
pub enum VersionLookup {
    /// It can run: its spec.
    Runnable(Arc<FunctionSpec>),
    /// It exists but is building or failed.
    NotReady(FunctionVersion),
    /// It is ready but cannot be served (its secrets do not open): why.
    Unresolvable(String),
    /// No such function or version.
    Unknown,
}

/// A ready version and its resolved spec.
#[derive(Clone, Debug)]
pub struct Served {
    /// The stored version.
    pub version: FunctionVersion,
    /// What the engine runs.
    pub spec: Arc<FunctionSpec>,
}

/// Functions and runtime policies, in memory, loaded from the store at start.
#[derive(Debug, Default)]
pub struct Registry {
    functions: DashMap<String, Entry>,
    runtime_policies: DashMap<String, Policy>,
    /// Opens the versions' secrets.
    keys: Arc<SecretKeys>,
}

impl Registry {
    /// An empty registry whose versions' secrets open with `keys`.
    pub fn new(keys: Arc<SecretKeys>) -> Registry {
        Registry {
            keys,
            ..Registry::default()
        }
    }

    /// The host's secret keys (to seal new secrets with).
    pub fn keys(&self) -> &SecretKeys {
        &self.keys
    }

    /// The policy of a runtime (the default for one that never set it).
    pub fn runtime_policy(&self, runtime: &str) -> Policy {
        self.runtime_policies
            .get(runtime)
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Sets a runtime's policy and re-resolves the functions that run on it; returns
    /// their new specs.
    pub fn set_runtime_policy(&self, runtime: &str, policy: Policy) -> Vec<Arc<FunctionSpec>> {
        self.runtime_policies.insert(runtime.to_string(), policy);
        let mut changed = Vec::new();
        for mut entry in self.functions.iter_mut() {
            // Versions called by number take the new policy on their next call.
            entry.pinned.clear();
            if let Some(served) = entry.serving.as_mut()
                && served.version.runtime == runtime
                && let Some(spec) = self.resolve_or_log(&served.version)
            {
                served.spec = spec;
                changed.push(served.spec.clone());
            }
        }
        changed
    }

    /// Every runtime with a policy, by name.
    pub fn runtime_policies(&self) -> Vec<(String, Policy)> {
        let mut all: Vec<_> = self
            .runtime_policies
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Forgets a runtime's policy.
    pub fn remove_runtime(&self, runtime: &str) {
        self.runtime_policies.remove(runtime);
    }

    /// A version's effective policy: its runtime's, with the version's overrides.
    pub fn policy_of(&self, version: &FunctionVersion) -> Policy {
        let base = self.runtime_policy(&version.runtime);
        let overrides = FunctionConfig::of(version).policy;
        base.patched(&serde_json::Value::Object(overrides))
            .unwrap_or(base)
    }

    /// What the engine runs for a stored version: fails when its secrets do not open
    /// (the host key changed) or its allow-list no longer parses.
    pub fn resolve(&self, version: &FunctionVersion) -> anyhow::Result<Arc<FunctionSpec>> {
        let config = FunctionConfig::of(version);
        let mut env = config.env;
        env.extend(self.keys.open_all(&version.name, &version.secrets)?);
        let allow_outbound = AllowList::parse(&config.allow_outbound).map_err(|e| {
            anyhow::anyhow!(
                "the allow_outbound list of {} version {}: {e}",
                version.name,
                version.version
            )
        })?;
        Ok(Arc::new(FunctionSpec {
            name: version.name.clone(),
            version: version.version,
            runtime: version.runtime.clone(),
            digest: version.digest.clone(),
            limits: config.limits,
            policy: self.policy_of(version),
            env: Env(Arc::new(env)),
            allow_outbound: Arc::new(allow_outbound),
        }))
    }

    /// [`Registry::resolve`], logging why a version cannot be served (its calls then
    /// answer that it has no runnable version; setting its secrets again fixes it).
    fn resolve_or_log(&self, version: &FunctionVersion) -> Option<Arc<FunctionSpec>> {
        match self.resolve(version) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::error!(function = %version.name, version = version.version,
                    "cannot serve this version: {e:#}");
                None
            }
        }
    }

    /// The spec calls of `name` run, if it has a ready version.
    pub fn serving(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        self.functions
            .get(name)
            .and_then(|e| e.serving.as_ref().map(|s| s.spec.clone()))
    }

    /// What `name` is right now.
    pub fn get(&self, name: &str) -> Option<Entry> {
        self.functions.get(name).map(|e| e.clone())
    }

    /// The newest version of `name`.
    pub fn newest(&self, name: &str) -> Option<FunctionVersion> {
        self.functions.get(name).map(|e| e.newest.clone())
    }

    /// Every function's newest version, by name.
    pub fn list(&self) -> Vec<FunctionVersion> {
        let mut all: Vec<_> = self.functions.iter().map(|e| e.newest.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The names of the functions with a ready version.
    pub fn serving_names(&self) -> Vec<String> {
        self.functions
            .iter()
            .filter(|e| e.serving.is_some())
            .map(|e| e.key().clone())
            .collect()
    }

    /// How many functions exist.
    pub fn count(&self) -> usize {
        self.functions.len()
    }

    /// The functions that use `runtime`.
    pub fn users_of(&self, runtime: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .functions
            .iter()
            .filter(|e| e.newest.runtime == runtime)
            .map(|e| e.key().clone())
            .collect();
        users.sort();
        users
    }

    /// Records a new newest version; a ready one also becomes the serving one.
    pub fn set_newest(&self, version: FunctionVersion) -> Option<Arc<FunctionSpec>> {
        let name = version.name.clone();
        let served = (version.status == crate::store::VersionStatus::Ready)
            .then(|| self.resolve_or_log(&version))
            .flatten()
            .map(|spec| Served {
                spec,
                version: version.clone(),
            });
        let spec = served.as_ref().map(|s| s.spec.clone());
        let mut entry = self
            .functions
            .entry(name)
            .or_insert_with(|| Entry::new(version.clone()));
        entry.versions.insert(version.version, version.clone());
        entry.newest = version;
        entry.pinned.clear();
        if served.is_some() {
            entry.serving = served;
        }
        spec
    }

    /// Records that a version finished building, if it is still the newest; a ready
    /// one becomes the serving one. Returns its spec when it does.
    pub fn finish_build(&self, version: FunctionVersion) -> Option<Arc<FunctionSpec>> {
        let mut entry = self.functions.get_mut(&version.name)?;
        if let Some(known) = entry.versions.get_mut(&version.version) {
            *known = version.clone();
        }
        if entry.newest.version != version.version {
            return None;
        }
        entry.newest = version.clone();
        if version.status != crate::store::VersionStatus::Ready {
            return None;
        }
        let spec = self.resolve_or_log(&version)?;
        entry.serving = Some(Served {
            version,
            spec: spec.clone(),
        });
        Some(spec)
    }

    /// Replaces the stored config of the newest and serving versions (a policy
    /// change: `serving` is the serving version's when it is an older one); returns
    /// the serving spec, re-resolved.
    pub fn set_config(
        &self,
        name: &str,
        newest: &serde_json::Value,
        serving: &serde_json::Value,
    ) -> Option<Arc<FunctionSpec>> {
        let mut entry = self.functions.get_mut(name)?;
        let entry = &mut *entry;
        entry.newest.config = newest.clone();
        let newest_version = entry.newest.version;
        if let Some(known) = entry.versions.get_mut(&newest_version) {
            known.config = newest.clone();
        }
        entry.pinned.clear();
        let served = entry.serving.as_mut()?;
        served.version.config = match served.version.version == newest_version {
            true => newest.clone(),
            false => serving.clone(),
        };
        if let Some(known) = entry.versions.get_mut(&served.version.version) {
            known.config = served.version.config.clone();
        }
        served.spec = self.resolve_or_log(&served.version)?;
        Some(served.spec.clone())
    }

    /// Forgets a function.
    pub fn remove(&self, name: &str) {
        self.functions.remove(name);
    }

    /// Loads a function at start from its live versions (any order; none: nothing)
    /// and the versions rollbacks set aside: it serves its newest ready version that
    /// is not set aside.
    pub fn load(&self, versions: Vec<FunctionVersion>, rolled_back: BTreeSet<i64>) {
        let Some(newest) = versions.iter().max_by_key(|v| v.version).cloned() else {
            return;
        };
        let mut entry = Entry::new(newest);
        entry.versions = versions.into_iter().map(|v| (v.version, v)).collect();
        entry.rolled_back = rolled_back;
        entry.serving = entry
            .versions
            .values()
            .rev()
            .find(|v| v.status == VersionStatus::Ready && !entry.rolled_back.contains(&v.version))
            .and_then(|version| {
                Some(Served {
                    spec: self.resolve_or_log(version)?,
                    version: version.clone(),
                })
            });
        self.functions.insert(entry.newest.name.clone(), entry);
    }

    /// Whether `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// What a call of version `number` of `name` runs: the serving spec when it is
    /// the serving version, else one resolved (once) with the function's policy.
    pub fn version_spec(&self, name: &str, number: i64) -> VersionLookup {
        let Some(mut entry) = self.functions.get_mut(name) else {
            return VersionLookup::Unknown;
        };
        if let Some(served) = &entry.serving
            && served.version.version == number
        {
            return VersionLookup::Runnable(served.spec.clone());
        }
        if let Some(spec) = entry.pinned.get(&number) {
            return VersionLookup::Runnable(spec.clone());
        }
        let Some(version) = entry.versions.get(&number) else {
            return VersionLookup::Unknown;
        };
        if version.status != VersionStatus::Ready {
            return VersionLookup::NotReady(version.clone());
        }
        // The function's policy: what the serving (else the newest) version overrides.
        let policy_of = entry.serving.as_ref().map_or(&entry.newest, |s| &s.version);
        let mut with_policy = version.clone();
        let mut config = FunctionConfig::of(&with_policy);
        config.policy = FunctionConfig::of(policy_of).policy;
        if let Ok(value) = serde_json::to_value(&config) {
            with_policy.config = value;
        }
        match self.resolve(&with_policy) {
            Ok(spec) => {
                entry.pinned.insert(number, spec.clone());
                VersionLookup::Runnable(spec)
            }
            Err(e) => VersionLookup::Unresolvable(format!("{e:#}")),
        }
    }

    /// Makes version `to` of `name` the serving one and sets `set_aside` aside (a
    /// rollback, already stored); returns its spec, or why it cannot serve.
    pub fn roll_back(
        &self,
        name: &str,
        to: &FunctionVersion,
        set_aside: &[i64],
    ) -> anyhow::Result<Arc<FunctionSpec>> {
        let spec = self.resolve(to)?;
        let mut entry = self
            .functions
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("function `{name}` was deleted meanwhile"))?;
        entry.rolled_back.remove(&to.version);
        entry.rolled_back.extend(set_aside.iter().copied());
        entry.pinned.clear();
        entry.serving = Some(Served {
            version: to.clone(),
            spec: spec.clone(),
        });
        Ok(spec)
    }

    /// Sets (or replaces) an alias of its function; `false` if the function is gone.
    pub fn set_alias(&self, alias: StoredAlias) -> bool {
        match self.functions.get_mut(&alias.function) {
            Some(mut entry) => {
                entry.aliases.insert(alias.alias.clone(), alias);
                true
            }
            None => false,
        }
    }

    /// One alias of `name`.
    pub fn alias(&self, name: &str, alias: &str) -> Option<StoredAlias> {
        self.functions.get(name)?.aliases.get(alias).cloned()
    }

    /// Forgets an alias; `false` if there was none.
    pub fn remove_alias(&self, name: &str, alias: &str) -> bool {
        self.functions
            .get_mut(name)
            .is_some_and(|mut entry| entry.aliases.remove(alias).is_some())
    }
}
