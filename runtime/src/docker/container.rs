//! Containers as instances: created hardened, attached before start, spoken to over
//! stdio, removed when spent.
//!
//! Why stdio and not a socket: the attached stdin/stdout needs no container network,
//! so containers run with `network_mode: none`, and a round trip costs ~0.2 ms.

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::egress::{InstanceEgress, MOUNT_POINT};
use super::engine::{Engine, lost_connection};
use super::protocol::{AgentMessage, FrameReader, HostMessage, ProtocolError, encode};
use super::{ContainerRuntime, RunMode};
use crate::egress::EgressStats;
use crate::error::{Error, Result};
use crate::executor::{CallOutcome, CallRequest, CallResult, Env, FunctionSpec};
use crate::limits::Limits;

/// The uid functions run as: not root, not any user of the image.
pub(crate) const FUNCTION_UID: &str = "10001";
/// Processes a function may have at once (a fork bomb stops here).
const PIDS_LIMIT: i64 = 128;
/// CPU a container may use, in billionths of a CPU (1 CPU).
const NANO_CPUS: i64 = 1_000_000_000;
/// Size of the writable /tmp, and of the tmpfs put over each `VOLUME` of an image.
const TMPFS_OPTIONS: &str = "rw,nosuid,nodev,size=64m";
/// Files a process may have open (soft = hard, so a function cannot raise it): enough
/// for any handler, and no exhausting the host's file table.
const NOFILE: i64 = 1024;
/// Size of /dev/shm (POSIX shared memory: multiprocessing's locks and queues). It is
/// charged to the container's memory like the tmpfs, but a small cap keeps one
/// function's stray segments from filling its memory unnoticed.
const SHM_SIZE: i64 = 16 << 20;
/// Room in a frame for all but the output and logs: the JSON keys, the call id and
/// the error text (the agent keeps at most 16 KiB of it).
const FRAME_OVERHEAD: u64 = 64 * 1024;

type Output =
    Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;

/// One container serving one function version (or, until `load`, a runtime-level
/// instance waiting for one). Dropped without being removed (its
/// caller vanished mid-start or mid-call), it removes its container in the
/// background, so no path leaves a container behind.
pub struct ContainerInstance {
    pub(crate) id: String,
    docker: Docker,
    engine: Arc<Engine>,
    /// The engine's generation when the container was started: once the engine has
    /// been lost since, the container's attached stdio is gone with it.
    generation: u64,
    mode: RunMode,
    workdir: String,
    run: String,
    io: Option<AgentIo>,
    memory_mb: u64,
    /// Set by anything that may have left the container unfit for another call.
    pub(crate) spent: bool,
    removed: bool,
    /// The directory mounted at `/run/newt` and the egress proxy serving it, when the
    /// instance may need one (see `docker::egress`). Dropped with the instance.
    egress: Option<InstanceEgress>,
    /// Counts the instance as in use by its kind of the pool of containers started
    /// ahead (see `docker::ahead`) while it lives.
    pub(crate) in_use: Option<Box<dyn Send + Sync>>,
}

impl super::ahead::Held for ContainerInstance {
    fn alive(&self) -> bool {
        ContainerInstance::alive(self)
    }
}

impl ContainerInstance {
    /// Removes the container, whatever its state.
    pub(crate) async fn remove(mut self) {
        remove_on(&self.docker, &self.engine, &self.id).await;
        self.removed = true;
        // The proxy outlives the container: nothing in it can see its tunnels cut first.
        self.egress = None;
    }

    /// Whether the container may still serve calls: not spent, and started since the
    /// engine was last lost.
    pub(crate) fn alive(&self) -> bool {
        !self.spent && self.generation == self.engine.generation()
    }

    /// What [`exit_reason`] needs, apart from the instance's borrowed stdio.
    fn who(&self) -> Who {
        Who {
            docker: self.docker.clone(),
            engine: self.engine.clone(),
            id: self.id.clone(),
            memory_mb: self.memory_mb,
            generation: self.generation,
        }
    }
}

/// A container to ask the engine about.
pub(crate) struct Who {
    docker: Docker,
    engine: Arc<Engine>,
    id: String,
    memory_mb: u64,
    generation: u64,
}

impl Drop for ContainerInstance {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (docker, engine) = (self.docker.clone(), self.engine.clone());
            let id = std::mem::take(&mut self.id);
            handle.spawn(async move {
                remove_on(&docker, &engine, &id).await;
                // A create still in flight at the engine when its caller vanished may
                // finish after the first removal: look once more.
                tokio::time::sleep(Duration::from_secs(2)).await;
                remove_on(&docker, &engine, &id).await;
            });
        }
    }
}

/// What a container is started for.
pub(crate) struct Start<'a> {
    /// The function's name (or a runtime-level instance's label).
    pub function: &'a str,
    /// The limits the container is created with.
    pub limits: &'a Limits,
    pub runtime: &'a ContainerRuntime,
    pub image: &'a str,
    /// The handler to load at start; `None` for an instance whose agent waits for
    /// `init` (see [`load`]): a runtime-level one, or one started ahead of its call.
    pub handler: Option<&'a str>,
    /// A runtime-level instance: the bare runtime image, whose agent readies itself to
    /// unpack the code `init` brings.
    pub generic: bool,
    /// Started ahead of the call that will take it (`docker::ahead`): the function's
    /// own image, its agent waiting for `init`.
    pub ahead: bool,
    /// The mount points the image declares (`VOLUME`), for [`host_config`].
    pub volumes: &'a [String],
    /// The function's variables and secrets, sent in `init` with the handler; empty
    /// for a runtime-level instance, which gets its function's in [`load`].
    pub env: &'a Env,
    /// Variables the container itself starts with: the runtime's `env`, then (for a
    /// function's own container) its bundle's `newt.toml` `[env]`. The agent lays the
    /// function's `env` over them at `init`, and a command-mode exec passes it, so the
    /// function's own values win.
    pub base_env: &'a [(String, String)],
    /// Host paths (canonical, checked against the allowed directories) bound
    /// read-only at their container paths.
    pub mounts: &'a [(std::path::PathBuf, String)],
    pub host_id: &'a str,
}

/// The attached stdio of an agent-mode container.
struct AgentIo {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: Output,
    frames: FrameReader,
    stderr: Vec<u8>,
}

/// The hardening every function container gets. `volumes` are the mount points the
/// image declares (`VOLUME`) and `workdir` the function's code folder.
fn host_config(limits: &Limits, volumes: &[String], workdir: &str) -> HostConfig {
    let memory = (limits.memory_mb << 20) as i64;
    let mut tmpfs = HashMap::from([("/tmp".to_string(), TMPFS_OPTIONS.to_string())]);
    // The engine makes an anonymous volume for each VOLUME of the image: host disk
    // without a cap, writable under a read-only root, and left behind by a removal
    // without `v`. A tmpfs mounted there instead is bounded (charged to the memory
    // limit) and goes with the container. Not over the code: a tmpfs would hide what
    // the image holds there, where a volume is seeded with it; such a volume goes
    // with the container when it is removed (`v`, see [`remove`]).
    for volume in volumes {
        let path = volume.trim_end_matches('/');
        let holds_code = path.is_empty()
            || workdir == path
            || workdir.starts_with(&format!("{path}/"))
            || path.starts_with(&format!("{workdir}/"));
        if !holds_code && path.starts_with('/') {
            tmpfs
                .entry(path.to_string())
                .or_insert_with(|| TMPFS_OPTIONS.to_string());
        }
    }
    let ulimit = |name: &str, limit: i64| ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(limit),
        hard: Some(limit),
    };
    HostConfig {
        network_mode: Some("none".into()),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        memory: Some(memory),
        // Equal to memory: no swap, so the limit is real and OOM is reported.
        memory_swap: Some(memory),
        nano_cpus: Some(NANO_CPUS),
        pids_limit: Some(PIDS_LIMIT),
        // No core dumps: a crash of a 4 GiB process would write 4 GiB.
        ulimits: Some(vec![ulimit("nofile", NOFILE), ulimit("core", 0)]),
        shm_size: Some(SHM_SIZE),
        // Its own IPC namespace, never shareable, whatever the daemon's default.
        ipc_mode: Some("private".into()),
        init: Some(true),
        // json-file has no size cap and halves attach throughput.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        ..Default::default()
    }
}

/// Creates, attaches and starts a container, by `deadline`. In agent mode with a
/// `handler`, also loads the function and waits for the agent to say it is ready;
/// without one the agent waits for `init` (a runtime-level instance, see [`load`]).
///
/// `egress`, when given, is mounted at [`MOUNT_POINT`]; its proxy (if it serves one
/// already) is announced to the agent in `init`.
pub(crate) async fn start(
    engine: &Arc<Engine>,
    docker: &Docker,
    what: &Start<'_>,
    egress: Option<InstanceEgress>,
    deadline: Instant,
) -> Result<ContainerInstance> {
    let started = tokio::time::timeout_at(
        deadline.into(),
        start_by(engine, docker, what, egress, deadline),
    )
    .await;
    started.unwrap_or_else(|_| {
        // The half-started container went with the dropped future (its drop removes it).
        Err(Error::Deadline(format!(
            "the call ran past its deadline of {} ms while its container started",
            what.limits.timeout_ms
        )))
    })
}

async fn start_by(
    engine: &Arc<Engine>,
    docker: &Docker,
    what: &Start<'_>,
    egress: Option<InstanceEgress>,
    deadline: Instant,
) -> Result<ContainerInstance> {
    let Start {
        function,
        limits,
        runtime,
        image,
        handler,
        generic,
        ahead,
        volumes,
        env: function_env,
        base_env,
        mounts,
        host_id,
    } = *what;
    let instance_id = uuid_like();
    // The tail of a v7 uuid is random; its head is the time, shared by concurrent starts.
    let name = format!("newt-{function}-{}", &instance_id[instance_id.len() - 12..]);
    let labels = HashMap::from([
        ("newt.managed".to_string(), "true".to_string()),
        ("newt.host".to_string(), host_id.to_string()),
        ("newt.function".to_string(), function.to_string()),
        ("newt.runtime".to_string(), runtime.name.clone()),
        ("newt.instance".to_string(), instance_id.clone()),
        ("newt.generic".to_string(), generic.to_string()),
        ("newt.ahead".to_string(), ahead.to_string()),
    ]);
    let agent = runtime.mode == RunMode::Agent;
    let cmd = if agent {
        split_command(&runtime.run)
    } else {
        // Command mode: the container only stays up; `run` is exec'd per call.
        vec!["sleep".into(), "infinity".into()]
    };
    // newt's own variables last: the engine keeps the last of a name given twice (the
    // runtime's and the bundle's names are refused as NEWT_* anyway).
    let mut env: Vec<String> = base_env
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.push(format!("NEWT_FUNCTION={function}"));
    if agent && generic {
        // A runtime-level instance: the agent readies itself to unpack the code that
        // `init` will bring.
        env.push("NEWT_RUNTIME_LEVEL=1".into());
    }
    // Read before the engine is asked anything: a loss from here on makes this
    // instance dead, never a survivor of the old engine alive.
    let generation = engine.generation();
    let mut host_config = host_config(limits, volumes, &runtime.path);
    let mut binds = Vec::new();
    if let Some(egress) = &egress {
        // Read-only: the function connects to the socket and can change nothing there.
        binds.push(Mount {
            target: Some(MOUNT_POINT.into()),
            source: Some(egress.dir().to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // The runtime's mounts: always read-only, and never propagating mounts made
    // under them on the host later (`rprivate`, the engine's default, said outright).
    for (source, target) in mounts {
        binds.push(Mount {
            target: Some(target.clone()),
            source: Some(source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            bind_options: Some(bollard::models::MountBindOptions {
                propagation: Some(bollard::models::MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if !binds.is_empty() {
        host_config.mounts = Some(binds);
    }
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd),
        user: Some(FUNCTION_UID.into()),
        working_dir: Some(runtime.path.clone()),
        env: Some(env),
        attach_stdin: Some(agent),
        attach_stdout: Some(agent),
        attach_stderr: Some(agent),
        open_stdin: Some(agent),
        // Closing our end of stdin ends the container.
        stdin_once: Some(agent),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    };
    // The instance owns the container from before it exists: a caller that vanishes
    // while the engine is still creating it leaves a drop that removes it by name.
    let mut instance = ContainerInstance {
        id: name.clone(),
        docker: docker.clone(),
        engine: engine.clone(),
        generation,
        mode: runtime.mode,
        workdir: runtime.path.clone(),
        run: runtime.run.clone(),
        io: None,
        memory_mb: limits.memory_mb,
        spent: false,
        removed: false,
        egress,
        in_use: None,
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .map_err(|e| engine.error("creating a container", e))?;
    let started = async {
        let id = instance.id.clone();
        if agent {
            // Attach before start, or the first bytes could be lost.
            let attached = docker
                .attach_container(
                    &id,
                    Some(
                        AttachContainerOptionsBuilder::default()
                            .stream(true)
                            .stdin(true)
                            .stdout(true)
                            .stderr(true)
                            .build(),
                    ),
                )
                .await
                .map_err(|e| engine.error("attaching to a container", e))?;
            instance.io = Some(AgentIo {
                input: attached.input,
                output: attached.output,
                frames: FrameReader::new(frame_limit(limits)),
                stderr: Vec::new(),
            });
        }
        docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| engine.error("starting a container", e))?;
        if agent {
            match handler {
                Some(handler) => {
                    init_agent(
                        &mut instance,
                        function,
                        limits,
                        handler,
                        &runtime.path,
                        None,
                        function_env,
                        deadline,
                    )
                    .await?
                }
                // A runtime-level instance, or one started ahead, joins its pool only
                // once its agent is up (interpreter started, a runtime-level one's
                // unpacking modules imported): a call that claims it must not wait
                // for the boot.
                None => await_agent(&mut instance, deadline).await?,
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    match started {
        Ok(()) => Ok(instance),
        Err(e) => {
            instance.remove().await;
            Err(e)
        }
    }
}

/// The largest frame accepted from the agent: twice the output and log caps, plus
/// 64 KiB. Output and logs travel JSON-escaped inside a `result`, so the frame is
/// bounded by what escaping can do to each, and the agent holds up its end:
///
/// - output: the agent refuses a return value whose JSON is over `max_output_bytes`.
///   That JSON has no raw control characters (`json.dumps` escapes them in strings
///   and compact separators add no whitespace), so quoting it again escapes only `"`
///   and `\`, to two bytes each: at most 2 × max_output_bytes.
/// - logs: at most `max_log_bytes` of UTF-8, which ordinary text (quotes, newlines,
///   tabs) escapes to at most twice that; a control character becomes six bytes
///   (`\u0000`), so a tight bound cannot come from the caps alone. The agent is told
///   this limit in `init` and cuts the logs, then the error text, until its reply
///   fits, so only logs full of control characters are ever cut further.
/// - the rest (keys, call id, an error the agent cuts to 16 KiB): [`FRAME_OVERHEAD`].
///
/// A frame announcing more is a protocol break: the call fails and the container is
/// removed. The real sizes of output and logs are checked again after parsing.
fn frame_limit(limits: &Limits) -> usize {
    (2 * (limits.max_output_bytes + limits.max_log_bytes) + FRAME_OVERHEAD) as usize
}

/// Loads a function into an instance whose agent waits for `init`, by `deadline`.
/// For a runtime-level instance its code travels in `init` (`bundle`), is unpacked
/// by the agent into `workdir` (on the writable /tmp) and imported; an instance of
/// the function's own image started ahead has the code in `workdir` already
/// (`bundle` is `None`). The container then belongs to that function. A function
/// with an `allow_outbound` list gets its egress proxy now, in the directory the
/// instance was created with.
// `env` is the function's over its bundle's: what `init` delivers.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load(
    instance: &mut ContainerInstance,
    spec: &FunctionSpec,
    env: &Env,
    handler: &str,
    workdir: &str,
    bundle: Option<&str>,
    stats: &Arc<EgressStats>,
    deadline: Instant,
) -> Result<()> {
    instance.workdir = workdir.to_string();
    if !spec.allow_outbound.is_empty() {
        let egress = instance.egress.as_mut().ok_or_else(|| {
            Error::InstanceStart(
                "this instance, started before its function was known, has no egress \
                 directory for the function's allow_outbound list"
                    .into(),
            )
        })?;
        egress.serve(&spec.allow_outbound, stats)?;
    }
    init_agent(
        instance,
        &spec.name,
        &spec.limits,
        handler,
        workdir,
        bundle,
        env,
        deadline,
    )
    .await
}

/// Pings the agent and waits for its `pong`.
async fn await_agent(instance: &mut ContainerInstance, deadline: Instant) -> Result<()> {
    match exchange(instance, &HostMessage::Ping, "start", deadline).await? {
        AgentMessage::Pong => Ok(()),
        other => Err(Error::InstanceStart(format!(
            "the agent answered ping with {other:?}"
        ))),
    }
}

// What `init` carries, one argument each; the two callers name them all.
#[allow(clippy::too_many_arguments)]
async fn init_agent(
    instance: &mut ContainerInstance,
    function: &str,
    limits: &Limits,
    handler: &str,
    workdir: &str,
    bundle: Option<&str>,
    env: &Env,
    deadline: Instant,
) -> Result<()> {
    let max_frame = frame_limit(limits);
    // Announced only when a proxy listens: a function without a list has no socket.
    let egress_socket = instance
        .egress
        .as_ref()
        .and_then(InstanceEgress::container_socket);
    let init = HostMessage::Init {
        function,
        handler,
        workdir,
        // The function's configuration arrives with its code, never before: a
        // runtime-level instance holds none until a function claims it.
        env: env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        max_log_bytes: limits.max_log_bytes,
        max_output_bytes: limits.max_output_bytes,
        max_frame_bytes: max_frame as u64,
        bundle,
        egress_socket,
    };
    if let Some(io) = instance.io.as_mut() {
        io.frames.set_max_frame(max_frame);
    }
    match exchange(instance, &init, "load the function", deadline).await? {
        AgentMessage::Ready { .. } => Ok(()),
        AgentMessage::Error { error, logs } => Err(Error::InstanceStart(format!(
            "the function failed to load: {}{}",
            error.trim_end(),
            if logs.is_empty() {
                String::new()
            } else {
                format!("\n{logs}")
            }
        ))),
        other => Err(Error::InstanceStart(format!(
            "the agent answered init with {other:?}"
        ))),
    }
}

/// Sends one setup message to the agent and returns its answer by `deadline`;
/// `doing` completes "the agent did not ... before the call's deadline".
async fn exchange(
    instance: &mut ContainerInstance,
    message: &HostMessage<'_>,
    doing: &str,
    deadline: Instant,
) -> Result<AgentMessage> {
    let who = instance.who();
    let io = instance.io.as_mut().expect("agent instances are attached");
    let frame = encode(message);
    if let Err(e) = io.input.write_all(&frame).await {
        // An engine that went away is why, more often than the agent.
        let reason = exit_reason(&who).await?;
        return Err(Error::InstanceStart(format!(
            "{reason} (sending {} to the agent failed: {e})",
            message.kind()
        )));
    }
    match tokio::time::timeout_at(deadline.into(), next_message(io)).await {
        Err(_) => Err(Error::Deadline(format!(
            "the agent did not {doing} before the call's deadline"
        ))),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(ended)) => Err(Error::InstanceStart(ended.describe(&who).await?)),
    }
}

/// Why reading from a container stopped.
enum Ended {
    /// The stream closed: the container is gone.
    Closed,
    /// The agent sent something that is not the protocol.
    Protocol(ProtocolError),
}

impl Ended {
    /// Why, for the call's record; `unavailable` when the engine went away.
    async fn describe(&self, who: &Who) -> Result<String> {
        match self {
            Ended::Protocol(e) => Ok(format!(
                "the container broke the protocol: {e}; the container is removed"
            )),
            Ended::Closed => exit_reason(who).await,
        }
    }
}

/// Reads until one whole message arrives, keeping stderr aside.
async fn next_message(io: &mut AgentIo) -> std::result::Result<AgentMessage, Ended> {
    loop {
        match io.frames.next_message() {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(e) => return Err(Ended::Protocol(e)),
        }
        match io.output.next().await {
            Some(Ok(LogOutput::StdOut { message })) => {
                io.frames.push(&message).map_err(Ended::Protocol)?
            }
            Some(Ok(LogOutput::StdErr { message })) => {
                if io.stderr.len() < 1 << 20 {
                    io.stderr.extend_from_slice(&message);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(Ended::Closed),
        }
    }
}

/// Asks the engine how a container ended: OOM, exit code, or still running. When the
/// engine does not answer, or was lost since the container started (the container
/// went with it), that is the answer: `unavailable`, at once.
pub(crate) async fn exit_reason(who: &Who) -> Result<String> {
    let Who {
        docker,
        engine,
        id,
        memory_mb,
        generation,
    } = who;
    // The engine may record the exit a moment after the stream closes.
    for _ in 0..20 {
        if engine.generation() != *generation {
            return Err(super::engine::unreachable(
                &engine.address,
                "the engine went away during the call, and the container with it",
            ));
        }
        let inspected = tokio::time::timeout(
            super::engine::PROBE_TIMEOUT,
            docker.inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await;
        let inspected = match inspected {
            Err(_) => {
                return Err(super::engine::unreachable(
                    &engine.address,
                    "no answer about the container's state in time",
                ));
            }
            Ok(Err(e)) if lost_connection(&e) => {
                return Err(engine.error("asking how the container ended", e));
            }
            Ok(inspected) => inspected,
        };
        if let Ok(inspect) = inspected
            && let Some(state) = inspect.state
        {
            if state.oom_killed == Some(true) {
                return Ok(format!("out of memory (limit {memory_mb} MiB)"));
            }
            if state.running != Some(true) {
                let code = state.exit_code.unwrap_or(-1);
                // 137 = SIGKILL: with memory = memory-swap that is the OOM killer.
                if code == 137 {
                    return Ok(format!(
                        "out of memory (limit {memory_mb} MiB): the container was killed"
                    ));
                }
                return Ok(format!("the container exited with code {code}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok("the container stopped answering".into())
}

/// Runs one call in an instance by `deadline`.
pub(crate) async fn invoke(
    docker: &Docker,
    spec: &FunctionSpec,
    instance: &mut ContainerInstance,
    call: &CallRequest,
    deadline: Instant,
) -> Result<CallOutcome> {
    let ran = match instance.mode {
        RunMode::Agent => {
            tokio::time::timeout_at(
                deadline.into(),
                invoke_agent(spec, instance, call, deadline),
            )
            .await
        }
        RunMode::Command => {
            tokio::time::timeout_at(
                deadline.into(),
                invoke_command(docker, spec, instance, call),
            )
            .await
        }
    };
    match ran {
        Ok(outcome) => outcome,
        Err(_) => {
            // The function is still running in there: never hand this one out again.
            instance.spent = true;
            Ok(CallOutcome::ended(
                CallResult::deadline_passed("", spec.limits.timeout()),
                take_stderr(instance),
            ))
        }
    }
}

fn take_stderr(instance: &mut ContainerInstance) -> bytes::Bytes {
    instance
        .io
        .as_mut()
        .map(|io| bytes::Bytes::from(std::mem::take(&mut io.stderr)))
        .unwrap_or_default()
}

async fn invoke_agent(
    spec: &FunctionSpec,
    instance: &mut ContainerInstance,
    call: &CallRequest,
    deadline: Instant,
) -> Result<CallOutcome> {
    let who = instance.who();
    let io = instance.io.as_mut().expect("agent instances are attached");
    io.stderr.clear();
    // The handler is told the same deadline the host enforces.
    let remaining = deadline.saturating_duration_since(Instant::now());
    let deadline_ms = crate::executor::unix_ms() + remaining.as_millis() as i64;
    // Input travels as it came: text as is, anything else as base64, never altered.
    let (input, input_b64) = match std::str::from_utf8(&call.input) {
        Ok(text) => (text, None),
        Err(_) => {
            use base64::Engine as _;
            (
                "",
                Some(base64::engine::general_purpose::STANDARD.encode(&call.input)),
            )
        }
    };
    let frame = encode(&HostMessage::Run {
        id: &call.call_id,
        input,
        input_b64: input_b64.as_deref(),
        deadline_ms: Some(deadline_ms),
    });
    fn failed(message: String, io: &mut AgentIo) -> CallOutcome {
        CallOutcome::ended(
            CallResult::Failed(message),
            bytes::Bytes::from(std::mem::take(&mut io.stderr)),
        )
    }
    // An engine that went away ends the call as `unavailable` (503), not as the
    // function's failure: the function did nothing wrong.
    if let Err(e) = io.input.write_all(&frame).await {
        instance.spent = true;
        let reason = exit_reason(&who).await?;
        let io = instance.io.as_mut().expect("agent instances are attached");
        return Ok(failed(
            format!("{reason} (sending the call failed: {e})"),
            io,
        ));
    }
    // Raced against the engine's loss: a stopping engine closes the stream only when
    // it exits, after stopping every container, which can take seconds.
    let read = tokio::select! {
        read = next_message(io) => read,
        () = who.engine.lost_since(who.generation) => Err(Ended::Closed),
    };
    let message = match read {
        Ok(message) => message,
        Err(ended) => {
            instance.spent = true;
            let reason = ended.describe(&who).await?;
            let io = instance.io.as_mut().expect("agent instances are attached");
            return Ok(failed(reason, io));
        }
    };
    let AgentMessage::Result {
        id: result_id,
        ok,
        output,
        error,
        logs,
    } = message
    else {
        instance.spent = true;
        let io = instance.io.as_mut().expect("agent instances are attached");
        return Ok(failed(
            format!("the agent sent {message:?} during a call"),
            io,
        ));
    };
    if result_id != call.call_id {
        instance.spent = true;
        let io = instance.io.as_mut().expect("agent instances are attached");
        return Ok(failed(
            format!(
                "the agent answered call {result_id} during call {}",
                call.call_id
            ),
            io,
        ));
    }
    let io = instance.io.as_mut().expect("agent instances are attached");
    let mut all_logs = logs.into_bytes();
    all_logs.extend_from_slice(&io.stderr);
    all_logs.truncate(spec.limits.max_log_bytes as usize);
    io.stderr.clear();
    let output = output.unwrap_or_default();
    // An exception or an oversized result leaves the agent healthy: the next call
    // may use it.
    if output.len() as u64 > spec.limits.max_output_bytes {
        return Ok(CallOutcome::ended(
            CallResult::Failed(format!(
                "output exceeds the limit of {} bytes",
                spec.limits.max_output_bytes
            )),
            all_logs.into(),
        ));
    }
    let result = if ok {
        CallResult::Done
    } else {
        CallResult::Failed(error.unwrap_or_else(|| "the function failed".into()))
    };
    Ok(CallOutcome {
        result,
        output: output.into(),
        logs: all_logs.into(),
        ..CallOutcome::default()
    })
}

async fn invoke_command(
    docker: &Docker,
    spec: &FunctionSpec,
    instance: &mut ContainerInstance,
    call: &CallRequest,
) -> Result<CallOutcome> {
    let engine = instance.engine.clone();
    let exec = docker
        .create_exec(
            &instance.id,
            CreateExecOptions {
                cmd: Some(vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    instance.run.clone(),
                ]),
                working_dir: Some(instance.workdir.clone()),
                user: Some(FUNCTION_UID.to_string()),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                // A command-mode function has no `init`: its configuration comes with
                // each call's process.
                env: Some(
                    spec.env
                        .iter()
                        .map(|(name, value)| format!("{name}={value}"))
                        .chain([format!("NEWT_CALL_ID={}", call.call_id)])
                        .collect(),
                ),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| engine.error("creating an exec", e))?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| engine.error("starting an exec", e))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(Error::Internal(anyhow::anyhow!("exec started detached")));
    };
    input
        .write_all(&call.input)
        .await
        .and(input.shutdown().await)
        .map_err(|e| {
            engine.error(
                "writing the input",
                bollard::errors::Error::IOError { err: e },
            )
        })?;
    drop(input);
    let (max_out, max_err) = (
        spec.limits.max_output_bytes as usize,
        spec.limits.max_log_bytes as usize,
    );
    let (mut stdout, mut stderr, mut overflow) = (Vec::new(), Vec::new(), false);
    loop {
        let chunk = tokio::select! {
            chunk = output.next() => chunk,
            () = engine.lost_since(instance.generation) => {
                instance.spent = true;
                return Err(super::engine::unreachable(
                    &engine.address,
                    "the engine went away during the call",
                ));
            }
        };
        let Some(chunk) = chunk else {
            break;
        };
        match chunk {
            Ok(LogOutput::StdOut { message }) => {
                if stdout.len() + message.len() > max_out {
                    overflow = true;
                    break;
                }
                stdout.extend_from_slice(&message);
            }
            Ok(LogOutput::StdErr { message }) => {
                let room = max_err.saturating_sub(stderr.len());
                stderr.extend_from_slice(&message[..message.len().min(room)]);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if overflow {
        // The command may still be writing: this container is not reused.
        instance.spent = true;
        return Ok(CallOutcome::ended(
            CallResult::Failed(format!("output exceeds the limit of {max_out} bytes")),
            stderr.into(),
        ));
    }
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| engine.error("inspecting an exec", e))?
        .exit_code
        .unwrap_or(-1);
    let result = if code == 0 {
        CallResult::Done
    } else {
        let text = String::from_utf8_lossy(&stderr);
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        CallResult::Failed(match last {
            Some(line) => format!("exited with code {code}: {}", line.trim()),
            None => format!("exited with code {code}"),
        })
    };
    Ok(CallOutcome {
        result,
        output: stdout.into(),
        logs: stderr.into(),
        ..CallOutcome::default()
    })
}

/// Removes a container, whatever its state. When the engine does not answer, the
/// container is remembered and removed when it answers again; other errors are
/// logged (a leftover is removed by the next start's cleanup).
pub(crate) async fn remove_on(docker: &Docker, engine: &Engine, id: &str) {
    // `v`: with the anonymous volumes of the image's VOLUMEs (those not replaced by a
    // tmpfs in [`host_config`]), or each removal would leave one behind.
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(e) if lost_connection(&e) => {
            tracing::debug!(
                container = id,
                "remove: {e}; removed when the engine is back"
            );
            engine.orphan(id);
        }
        Err(e) => tracing::debug!(container = id, "remove: {e}"),
    }
}

/// Splits a command line on whitespace (runtime `run` commands are simple).
fn split_command(command: &str) -> Vec<String> {
    command.split_whitespace().map(str::to_string).collect()
}

/// A random id for naming and labelling an instance.
fn uuid_like() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_config_hardens_every_container() {
        let limits = Limits {
            memory_mb: 64,
            ..Limits::default()
        };
        let config = host_config(&limits, &[], "/app");
        assert_eq!(config.network_mode.as_deref(), Some("none"));
        assert_eq!(config.readonly_rootfs, Some(true));
        assert_eq!(config.memory, Some(64 << 20));
        assert_eq!(config.memory_swap, config.memory);
        assert_eq!(config.shm_size, Some(16 << 20));
        assert_eq!(config.ipc_mode.as_deref(), Some("private"));
        let ulimits: Vec<_> = config
            .ulimits
            .unwrap()
            .into_iter()
            .map(|u| (u.name.unwrap(), u.soft.unwrap(), u.hard.unwrap()))
            .collect();
        assert_eq!(
            ulimits,
            [
                ("nofile".to_string(), 1024, 1024),
                ("core".to_string(), 0, 0)
            ]
        );
        assert_eq!(config.tmpfs.unwrap().len(), 1);
    }

    #[test]
    fn image_volumes_become_tmpfs_except_over_the_code() {
        let volumes = [
            "/data".to_string(),
            "/var/cache/".to_string(),
            "/app".to_string(),
            "/app/models".to_string(),
            "/".to_string(),
            "/srv".to_string(),
            "/tmp".to_string(),
        ];
        let tmpfs = host_config(&Limits::default(), &volumes, "/srv/fn")
            .tmpfs
            .unwrap();
        let mut paths: Vec<_> = tmpfs.keys().map(String::as_str).collect();
        paths.sort();
        assert_eq!(
            paths,
            ["/app", "/app/models", "/data", "/tmp", "/var/cache"]
        );
        assert!(tmpfs.values().all(|o| o == TMPFS_OPTIONS));
        let tmpfs = host_config(&Limits::default(), &volumes, "/app")
            .tmpfs
            .unwrap();
        assert!(!tmpfs.contains_key("/app") && !tmpfs.contains_key("/app/models"));
    }

    #[test]
    fn frames_are_bounded_by_twice_the_caps_plus_overhead() {
        let limits = Limits {
            max_output_bytes: 1000,
            max_log_bytes: 500,
            ..Limits::default()
        };
        assert_eq!(frame_limit(&limits), 3000 + 64 * 1024);
        let most = Limits {
            max_output_bytes: crate::limits::MAX_OUTPUT_BYTES,
            max_log_bytes: crate::limits::MAX_LOG_BYTES,
            ..Limits::default()
        };
        // Fits the 4-byte length prefix with room to spare.
        assert!(frame_limit(&most) < u32::MAX as usize / 16);
    }
}
