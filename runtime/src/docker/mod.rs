//! The container executor: functions in native runtimes (Python first) run in Docker
//! containers, driven through bollard.
//!
//! A runtime is an image plus how to use it ([`ContainerRuntime`]). Preparing a
//! function builds an image `FROM` the runtime's image with the bundle copied to the
//! runtime's `path` and its requirements installed. An instance is a hardened
//! container of that image: in *agent* mode it runs newt's agent, which imports the
//! handler once and serves calls over the frame protocol on stdio; in *command* mode
//! the container only stays up and the runtime's `run` command is exec'd in it per
//! call, input on stdin and result on stdout, so any image can be a runtime.

mod container;
mod engine;
mod image;
mod protocol;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::bundle::{BundleLimits, unpack};
use crate::error::{Error, Result};
use crate::executor::{BackendHealth, CallOutcome, CallRequest, Executor, FunctionSpec};
use crate::limits::Limits;

pub use container::ContainerInstance;

/// How a container runtime runs a function's code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// `run` starts newt's agent, which keeps the handler imported between calls.
    Agent,
    /// `run` is started once per call with the input on stdin; stdout is the result.
    #[default]
    Command,
}

/// A container runtime: an image and how to use it (the seed platform's runtime
/// object, plus the mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRuntime {
    /// The runtime's name, used in deploys (`?runtime=python`).
    pub name: String,
    /// The Docker image functions are built from. Must exist on the engine: there is
    /// no registry to pull from.
    pub image: String,
    /// Where function code is unpacked, and the working directory of calls.
    #[serde(default = "default_path")]
    pub path: String,
    /// Installs a function's requirements at build time, run in `path`, when the
    /// bundle has a `requirements.txt` (e.g. `pip3 install -r requirements.txt`).
    #[serde(default)]
    pub dependencies: Option<String>,
    /// Used instead of `dependencies` when the bundle carries a `wheels/` folder, so
    /// requirements install without a network.
    #[serde(default)]
    pub dependencies_offline: Option<String>,
    /// Agent mode: the command that starts the agent. Command mode: the command run
    /// per call.
    pub run: String,
    /// Agent or command mode. Runtimes registered the seed's way are command mode.
    #[serde(default)]
    pub mode: RunMode,
    /// The preload policy of the runtime's functions (each may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Policy>,
}

fn default_path() -> String {
    "/app".into()
}

impl ContainerRuntime {
    /// The built-in `python` runtime (`runtimes/python/runtime.toml`).
    pub fn builtin_python() -> ContainerRuntime {
        toml::from_str(image::PYTHON_RUNTIME_TOML)
            .expect("runtimes/python/runtime.toml is valid (checked by a test)")
    }

    /// Checks the fields a caller sent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRuntime(m));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return bad(format!(
                "invalid runtime name {:?}: use 1 to 63 characters of a-z, 0-9 and '-'",
                self.name
            ));
        }
        if self.name == "wasm" {
            return bad("`wasm` is the built-in WebAssembly runtime".into());
        }
        if !image::valid_reference(&self.image) {
            return bad(format!(
                "invalid image {:?}: give a Docker image reference such as \
                 `newt/python:3` or `registry.example.com:5000/team/app:1.2` (lowercase \
                 name components, an optional tag, an optional @sha256 digest)",
                self.image
            ));
        }
        if !self.path.starts_with('/') || self.path.contains("..") || self.path.contains('\n') {
            return bad(format!(
                "path must be an absolute directory, got {:?}",
                self.path
            ));
        }
        if self.run.trim().is_empty() {
            return bad("run must name a command".into());
        }
        for cmd in [&self.dependencies, &self.dependencies_offline]
            .into_iter()
            .flatten()
        {
            if cmd.contains('\n') {
                return bad("dependencies must be one line".into());
            }
        }
        Ok(())
    }
}

/// Settings of the container executor.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The engine's address (`DOCKER_HOST`); `unix:///var/run/docker.sock` if unset.
    pub address: Option<String>,
    /// Scratch space for image builds (`$NEWT_HOME/docker`).
    pub work_dir: PathBuf,
    /// Names this host among others sharing the engine (e.g. a hash of its home):
    /// containers carry it, and cleanup only removes this host's leftovers.
    pub host_id: String,
}

/// A function version ready to start containers from.
pub struct ContainerPrepared {
    image: String,
    runtime: ContainerRuntime,
    handler: String,
    /// The validated code repacked as base64 .tar.gz, for loading into a
    /// runtime-level instance; `None` when the function needs its own image (it has
    /// requirements to install, or the runtime is in command mode).
    generic_bundle: Option<String>,
}

/// Where a runtime-level instance unpacks the code it is given: the writable /tmp.
const GENERIC_WORKDIR: &str = "/tmp/fn";

/// Runs functions of container runtimes.
pub struct DockerExecutor {
    address: String,
    client: std::result::Result<Docker, String>,
    runtimes: DashMap<String, ContainerRuntime>,
    work_dir: PathBuf,
    host_id: String,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The handler every bundle defines, `main.py`'s `handler`.
const DEFAULT_HANDLER: &str = "main:handler";

impl DockerExecutor {
    /// An executor for the engine in `config`, with the built-in `python` runtime.
    /// Never fails: an unreachable engine makes container operations answer
    /// `unavailable`, nothing else.
    pub fn new(config: DockerConfig) -> Self {
        let address = config
            .address
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| engine::DEFAULT_HOST.to_string());
        let python = ContainerRuntime::builtin_python();
        DockerExecutor {
            client: engine::connect(&address),
            address,
            runtimes: DashMap::from_iter([(python.name.clone(), python)]),
            work_dir: config.work_dir,
            host_id: config.host_id,
        }
    }

    /// A registered runtime.
    fn runtime(&self, name: &str) -> Option<ContainerRuntime> {
        self.runtimes.get(name).map(|r| r.clone())
    }

    /// The engine, if it answers.
    async fn docker(&self) -> Result<&Docker> {
        let docker = self.client_or_unavailable()?;
        docker
            .ping()
            .await
            .map_err(|e| engine::unreachable(&self.address, e))?;
        Ok(docker)
    }

    /// The client, without asking the engine anything.
    fn client_or_unavailable(&self) -> Result<&Docker> {
        self.client
            .as_ref()
            .map_err(|reason| engine::unreachable(&self.address, reason))
    }

    /// Removes every container this host started: at start, what a previous process
    /// left; at shutdown, everything.
    pub async fn remove_leftovers(&self) -> Result<usize> {
        let docker = self.docker().await?;
        let mut filters = HashMap::new();
        let host = format!("newt.host={}", self.host_id);
        filters.insert("label", vec!["newt.managed=true", host.as_str()]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("listing containers: {e}")))?;
        let mut removed = 0;
        for id in containers.into_iter().filter_map(|c| c.id) {
            container::remove(docker, &id).await;
            removed += 1;
        }
        Ok(removed)
    }

    /// Makes sure a runtime's image is on the engine, building the built-in Python
    /// image if needed.
    pub async fn ensure_runtime_image(&self, runtime: &ContainerRuntime) -> Result<()> {
        let docker = self.docker().await?;
        self.ensure_image_on(docker, runtime).await
    }

    /// [`Self::ensure_runtime_image`] on an engine already known to answer.
    async fn ensure_image_on(&self, docker: &Docker, runtime: &ContainerRuntime) -> Result<()> {
        if runtime.image == ContainerRuntime::builtin_python().image {
            return image::ensure_python_base(docker, &runtime.image, &self.work_dir).await;
        }
        if !image::image_exists(docker, &runtime.image).await? {
            return Err(Error::InvalidRuntime(format!(
                "image {} is not on the Docker engine, and there is no registry to pull it \
                 from: build or load it first (docker build / docker load)",
                runtime.image
            )));
        }
        Ok(())
    }

    fn runtime_for(&self, spec: &FunctionSpec) -> Result<ContainerRuntime> {
        self.runtime(&spec.runtime)
            .ok_or_else(|| Error::UnknownRuntime(spec.runtime.clone()))
    }
}

/// Unpacks a bundle for `runtime` into `dest`, refusing unsafe archives and agent
/// bundles without a `main.py`.
fn unpack_for(
    runtime: &ContainerRuntime,
    bundle: &[u8],
    dest: &Path,
) -> Result<crate::bundle::Unpacked> {
    let unpacked = unpack(bundle, dest, &BundleLimits::default())?;
    if runtime.mode == RunMode::Agent && !unpacked.files.iter().any(|f| f == Path::new("main.py")) {
        return Err(Error::InvalidBundle(
            "the bundle has no main.py at its root: the handler is main.py's `handler`".into(),
        ));
    }
    Ok(unpacked)
}

/// The validated tree as base64 of a .tar.gz, what a runtime-level instance loads.
fn generic_bundle(code_dir: &Path) -> Result<String> {
    use base64::Engine as _;
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", code_dir)
        .map_err(|e| Error::io("packing", code_dir, e))?;
    let gz = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| Error::io("packing", code_dir, e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gz))
}

/// The build context: a Dockerfile and the unpacked bundle under `code/`.
fn build_context(
    runtime: &ContainerRuntime,
    code_dir: &Path,
    has_requirements: bool,
    has_wheels: bool,
) -> Result<Vec<u8>> {
    let install = if has_requirements {
        let command = if has_wheels {
            runtime
                .dependencies_offline
                .as_ref()
                .or(runtime.dependencies.as_ref())
        } else {
            runtime.dependencies.as_ref()
        };
        command.map(|c| format!("RUN {c}\n")).unwrap_or_default()
    } else {
        String::new()
    };
    let dockerfile = format!(
        "FROM {image}\nUSER root\nCOPY code/ {path}/\nWORKDIR {path}\n{install}USER {uid}\n",
        image = runtime.image,
        path = runtime.path,
        uid = container::FUNCTION_UID,
    );
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .and_then(|()| tar.append_dir_all("code", code_dir))
        .map_err(|e| Error::io("packing the build context from", code_dir, e))?;
    tar.into_inner()
        .map_err(|e| Error::io("packing the build context from", code_dir, e))
}

#[async_trait]
impl Executor for DockerExecutor {
    type Prepared = ContainerPrepared;
    type Instance = ContainerInstance;

    fn name(&self) -> &'static str {
        "docker"
    }

    fn can_handle(&self, runtime: &str) -> bool {
        self.runtimes.contains_key(runtime)
    }

    /// The engine answers, and the bundle unpacks safely with what the runtime needs
    /// in it. The image itself is built afterwards.
    async fn check_bundle(&self, runtime: &str, bundle: &Bytes) -> Result<()> {
        let runtime = self
            .runtime(runtime)
            .ok_or_else(|| Error::UnknownRuntime(runtime.to_string()))?;
        self.docker().await?;
        let work_dir = self.work_dir.clone();
        let bundle = bundle.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&work_dir).map_err(|e| Error::io("creating", &work_dir, e))?;
            let scratch = tempfile::tempdir_in(&work_dir)
                .map_err(|e| Error::io("creating a scratch directory in", &work_dir, e))?;
            unpack_for(&runtime, &bundle, scratch.path()).map(drop)
        })
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("unpack task: {e}")))?
    }

    fn prepares_in_background(&self) -> bool {
        true
    }

    async fn prepare(&self, spec: &FunctionSpec, bundle: &Path) -> Result<ContainerPrepared> {
        let runtime = self.runtime_for(spec)?;
        let docker = self.docker().await?;
        self.ensure_image_on(docker, &runtime).await?;
        // The tag names everything the image is made from: the bundle, the runtime's
        // definition and the exact base image. Same inputs, same image: skip the build.
        let base_id = image::image_id(docker, &runtime.image).await?;
        // The policy says how many containers to keep, not what is in them.
        let build_inputs = ContainerRuntime {
            policy: None,
            ..runtime.clone()
        };
        let inputs = format!(
            "{}\n{}\n{base_id}",
            spec.digest,
            serde_json::to_string(&build_inputs).unwrap_or_default()
        );
        let tag = format!(
            "newt-fn/{}:{}",
            spec.name,
            &crate::cas::Digest::of(inputs.as_bytes()).as_str()[..16]
        );
        let bytes = std::fs::read(bundle).map_err(|e| Error::io("reading", bundle, e))?;
        std::fs::create_dir_all(&self.work_dir)
            .map_err(|e| Error::io("creating", &self.work_dir, e))?;
        let scratch = tempfile::tempdir_in(&self.work_dir)
            .map_err(|e| Error::io("creating a build directory in", &self.work_dir, e))?;
        let code = scratch.path().join("code");
        std::fs::create_dir(&code).map_err(|e| Error::io("creating", &code, e))?;
        let build_runtime = runtime.clone();
        let (context, generic) = tokio::task::spawn_blocking(move || {
            let unpacked = unpack_for(&build_runtime, &bytes, &code)?;
            // Code with requirements needs its own image; the rest can also be loaded
            // into a runtime-level instance.
            let generic = if build_runtime.mode == RunMode::Agent && !unpacked.has_requirements {
                Some(generic_bundle(&code)?)
            } else {
                None
            };
            let context = build_context(
                &build_runtime,
                &code,
                unpacked.has_requirements,
                unpacked.has_wheels,
            )?;
            Ok::<_, Error>((context, generic))
        })
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("unpack task: {e}")))??;
        let prepared = ContainerPrepared {
            image: tag.clone(),
            runtime: runtime.clone(),
            handler: DEFAULT_HANDLER.into(),
            generic_bundle: generic,
        };
        if image::image_exists(docker, &tag).await? {
            return Ok(prepared);
        }

        let labels = HashMap::from([
            ("newt.managed".to_string(), "true".to_string()),
            ("newt.function".to_string(), spec.name.clone()),
            ("newt.runtime".to_string(), spec.runtime.clone()),
        ]);
        image::build_function_image(docker, &tag, &labels, context).await?;
        Ok(prepared)
    }

    async fn create(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<ContainerPrepared>,
        deadline: Instant,
    ) -> Result<ContainerInstance> {
        let docker = self.docker().await?;
        container::start(
            docker,
            &container::Start {
                function: &spec.name,
                limits: &spec.limits,
                runtime: &prepared.runtime,
                image: &prepared.image,
                handler: Some(&prepared.handler),
                host_id: &self.host_id,
            },
            deadline,
        )
        .await
    }

    fn has_runtime_instances(&self, runtime: &str) -> bool {
        self.runtime(runtime)
            .is_some_and(|r| r.mode == RunMode::Agent)
    }

    async fn create_generic(&self, runtime: &str, deadline: Instant) -> Result<ContainerInstance> {
        let runtime = self
            .runtime(runtime)
            .ok_or_else(|| Error::UnknownRuntime(runtime.to_string()))?;
        let docker = self.docker().await?;
        self.ensure_image_on(docker, &runtime).await?;
        // Generic instances are started with the default limits and no code.
        container::start(
            docker,
            &container::Start {
                function: &format!("rt-{}", runtime.name),
                limits: &Limits::default(),
                runtime: &runtime,
                image: &runtime.image,
                handler: None,
                host_id: &self.host_id,
            },
            deadline,
        )
        .await
    }

    fn can_load(&self, spec: &FunctionSpec, prepared: &ContainerPrepared) -> bool {
        prepared.generic_bundle.is_some() && spec.limits == Limits::default()
    }

    async fn load(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<ContainerPrepared>,
        instance: &mut ContainerInstance,
        deadline: Instant,
    ) -> Result<()> {
        let bundle = prepared
            .generic_bundle
            .as_deref()
            .ok_or_else(|| Error::InstanceStart("the function needs its own image".into()))?;
        container::load(
            instance,
            spec,
            &prepared.handler,
            GENERIC_WORKDIR,
            bundle,
            deadline,
        )
        .await
    }

    async fn invoke(
        &self,
        spec: &FunctionSpec,
        instance: &mut ContainerInstance,
        call: &CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        let docker = self.client_or_unavailable()?;
        container::invoke(docker, spec, instance, call, deadline).await
    }

    fn reusable(&self, instance: &ContainerInstance) -> bool {
        !instance.spent
    }

    async fn destroy(&self, instance: ContainerInstance) {
        instance.remove().await;
    }

    async fn health(&self) -> BackendHealth {
        let reachable = match &self.client {
            Ok(docker) => docker.version().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        match reachable {
            Ok(version) => BackendHealth {
                reachable: true,
                address: self.address.clone(),
                version: version.version,
                error: None,
            },
            Err(error) => BackendHealth {
                reachable: false,
                address: self.address.clone(),
                version: None,
                error: Some(error),
            },
        }
    }

    fn runtimes(&self) -> Vec<ContainerRuntime> {
        let mut all: Vec<_> = self.runtimes.iter().map(|r| r.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn takes_runtimes(&self) -> bool {
        true
    }

    async fn register_runtime(&self, runtime: ContainerRuntime, check: bool) -> Result<()> {
        runtime.validate()?;
        if check {
            self.ensure_runtime_image(&runtime).await?;
        }
        self.runtimes.insert(runtime.name.clone(), runtime);
        Ok(())
    }

    fn remove_runtime(&self, name: &str) -> bool {
        self.runtimes.remove(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_python_runtime_parses_and_is_valid() {
        let python = ContainerRuntime::builtin_python();
        assert_eq!(python.name, "python");
        assert_eq!(python.mode, RunMode::Agent);
        python.validate().unwrap();
    }

    #[test]
    fn seed_runtime_object_is_command_mode_with_defaults() {
        let rt: ContainerRuntime = serde_json::from_str(
            r#"{"name":"py","image":"python:3.12-slim","path":"/app","dependencies":"pip3 install -r requirements.txt","run":"python3 test.py"}"#,
        )
        .unwrap();
        assert_eq!(rt.mode, RunMode::Command);
        rt.validate().unwrap();
    }

    #[test]
    fn runtime_images_must_be_image_references() {
        let base = ContainerRuntime::builtin_python();
        let digest = format!("a@sha256:{}", "ab".repeat(32));
        for image in [
            "newt/python:3",
            "localhost:5000/a/b:1.2",
            "python:3.12-slim",
            digest.as_str(),
        ] {
            let runtime = ContainerRuntime {
                image: image.into(),
                ..base.clone()
            };
            runtime.validate().unwrap();
        }
        let refused = ContainerRuntime {
            image: "x/../get?names=a".into(),
            ..base
        }
        .validate()
        .unwrap_err();
        assert!(
            refused.to_string().contains("Docker image reference"),
            "{refused}"
        );
    }

    #[test]
    fn bad_runtime_fields_are_refused() {
        let base = ContainerRuntime::builtin_python();
        for broken in [
            ContainerRuntime {
                name: "Py".into(),
                ..base.clone()
            },
            ContainerRuntime {
                name: "wasm".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "a b".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "x/../get?names=a".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "../../containers/json".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "Ubuntu".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "a//b".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "a:".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "FROM a\nRUN x".into(),
                ..base.clone()
            },
            ContainerRuntime {
                path: "relative".into(),
                ..base.clone()
            },
            ContainerRuntime {
                run: " ".into(),
                ..base.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }
}
