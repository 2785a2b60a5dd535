//! Images: the offline base image of the built-in Python runtime, and one image per
//! function version built `FROM` its runtime's image.
//!
//! There is no registry here, so the Python base image is made from Debian's packages
//! by `runtimes/python/rootfs.sh` (debootstrap) and imported with the engine's image
//! create (`fromSrc=-`). It carries a label with a hash of its recipe: a start looks
//! the label up first and builds nothing when it matches. A file lock keeps two
//! processes (parallel tests) from building it at once.

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateImageOptionsBuilder, ListImagesOptionsBuilder,
};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::BuildLimits;
use crate::error::{Error, Result};

/// The recipe of the built-in Python runtime, compiled into the binary so a newt
/// binary can build its base image anywhere.
pub(crate) const PYTHON_ROOTFS_SH: &str = include_str!("../../../runtimes/python/rootfs.sh");
/// The agent that runs inside Python containers.
pub(crate) const PYTHON_AGENT: &str = include_str!("../../../runtimes/python/agent.py");
/// The built-in runtime's definition.
pub(crate) const PYTHON_RUNTIME_TOML: &str = include_str!("../../../runtimes/python/runtime.toml");

/// Label holding the recipe hash of a base image.
const RECIPE_LABEL: &str = "newt.recipe";

/// The image config the base image is imported with.
const PYTHON_IMAGE_CONFIG: [&str; 4] = [
    "USER 10001",
    "WORKDIR /app",
    "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
    "CMD [\"python3\", \"/opt/newt/agent.py\"]",
];

/// sha256 of everything the base image is made from: the recipe, the agent and the
/// image config (not runtime.toml: its policy or commands do not change the image).
pub(crate) fn python_recipe_hash() -> String {
    let mut h = Sha256::new();
    for part in [PYTHON_ROOTFS_SH, PYTHON_AGENT]
        .into_iter()
        .chain(PYTHON_IMAGE_CONFIG)
    {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// An engine error of `action`: `unavailable` when the engine did not answer (so a
/// call during an outage gets 503, not 500), internal otherwise.
fn docker_error(action: &str, e: bollard::errors::Error) -> Error {
    if super::engine::lost_connection(&e) {
        Error::Unavailable {
            backend: "docker",
            reason: format!("Docker engine not reachable: {action}: {e}"),
        }
    } else {
        Error::Internal(anyhow::anyhow!("{action}: {e}"))
    }
}

/// Whether an image tagged `tag` with `label = value` exists.
async fn has_labelled_image(docker: &Docker, tag: &str, label: &str, value: &str) -> Result<bool> {
    let filter = format!("{label}={value}");
    let mut filters = HashMap::new();
    filters.insert("label", vec![filter.as_str()]);
    filters.insert("reference", vec![tag]);
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| docker_error("listing images", e))?;
    Ok(!images.is_empty())
}

/// Makes sure the Python base image `tag` exists and matches the recipe, building it
/// from Debian's packages if not (about a minute).
pub(crate) async fn ensure_python_base(docker: &Docker, tag: &str, work_dir: &Path) -> Result<()> {
    let recipe = python_recipe_hash();
    if has_labelled_image(docker, tag, RECIPE_LABEL, &recipe).await? {
        return Ok(());
    }
    std::fs::create_dir_all(work_dir).map_err(|e| Error::io("creating", work_dir, e))?;
    // One lock per machine, not per home: every newt on this engine shares the image.
    let lock_path = std::env::temp_dir().join("newt-python-base.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| Error::io("creating", &lock_path, e))?;
    // Blocking lock on a blocking thread: another process may be building right now.
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("lock task: {e}")))?
        .map_err(|e| Error::io("locking", &lock_path, e))?;
    // The other process may have finished it while we waited.
    if has_labelled_image(docker, tag, RECIPE_LABEL, &recipe).await? {
        return Ok(());
    }
    tracing::info!(
        image = tag,
        "building the Python base image from Debian packages (about a minute, once)"
    );
    let started = std::time::Instant::now();
    let scratch = build_rootfs(work_dir).await?;
    let tar = tar_directory(&scratch.path().join("rootfs")).await?;
    tracing::info!(bytes = tar.len(), "importing the base image");
    import_image(docker, tag, &recipe, tar).await?;
    tracing::info!(
        image = tag,
        secs = started.elapsed().as_secs(),
        "Python base image ready"
    );
    drop(lock);
    Ok(())
}

/// Runs the recipe into `rootfs/` of a scratch directory removed when dropped.
async fn build_rootfs(work_dir: &Path) -> Result<tempfile::TempDir> {
    let scratch = tempfile::Builder::new()
        .prefix("python-rootfs-")
        .tempdir_in(work_dir)
        .map_err(|e| Error::io("creating", work_dir, e))?;
    let recipe_dir = scratch.path().join("recipe");
    let rootfs = scratch.path().join("rootfs");
    std::fs::create_dir_all(&recipe_dir).map_err(|e| Error::io("creating", &recipe_dir, e))?;
    for (name, body) in [("rootfs.sh", PYTHON_ROOTFS_SH), ("agent.py", PYTHON_AGENT)] {
        let path = recipe_dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(body.as_bytes()))
            .map_err(|e| Error::io("writing", &path, e))?;
    }
    let output = tokio::process::Command::new("bash")
        .arg(recipe_dir.join("rootfs.sh"))
        .arg(&rootfs)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Unavailable {
            backend: "docker",
            reason: format!("cannot run the Python base image recipe: {e}"),
        })?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        tracing::info!(target: "newt::python_base", "{line}");
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Unavailable {
            backend: "docker",
            reason: format!(
                "building the Python base image failed ({}):\n{}",
                output.status,
                tail.join("\n")
            ),
        });
    }
    Ok(scratch)
}

/// Tars a directory (numeric owners kept, symlinks as links) into memory.
async fn tar_directory(root: &Path) -> Result<Vec<u8>> {
    let output = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "-cf", "-", "."])
        .output()
        .await
        .map_err(|e| Error::io("running tar on", root, e))?;
    if !output.status.success() {
        return Err(Error::Internal(anyhow::anyhow!(
            "tar of the base image failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output.stdout)
}

/// Imports a root filesystem tarball as `tag`, with the runtime's image config.
async fn import_image(docker: &Docker, tag: &str, recipe: &str, tar: Vec<u8>) -> Result<()> {
    let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let mut changes: Vec<String> = PYTHON_IMAGE_CONFIG.iter().map(|c| c.to_string()).collect();
    changes.push(format!("LABEL {RECIPE_LABEL}={recipe} newt.managed=true"));
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .changes(changes)
        .build();
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = progress.next().await {
        item.map_err(|e| docker_error("importing the base image", e))?;
    }
    Ok(())
}

/// What a function image build is told besides its context.
pub(crate) struct FunctionBuild<'a> {
    /// The image's tag.
    pub tag: &'a str,
    /// Memory, CPU, network and time of the build.
    pub limits: &'a BuildLimits,
    /// When the build is cancelled.
    pub deadline: std::time::Instant,
    /// Where the build's progress goes, with the names of its `RUN` steps (see
    /// `step_names`).
    pub progress: Option<(&'a super::progress::BuildEntry, &'a [(String, String)])>,
}

/// The name of the step a build is at, from the engine's `Step 3/7 : COPY ...` line.
/// `next` is the first of `names` not reached yet: the steps come in order, and two
/// steps may read alike (`sleep 3` twice).
fn step_name(line: &str, names: &[(String, String)], next: &mut usize) -> Option<String> {
    let instruction = line.strip_prefix("Step ")?.split_once(" : ")?.1.trim();
    let later = names.get(*next..).unwrap_or_default();
    if let Some(at) = later.iter().position(|(i, _)| i.trim() == instruction) {
        *next += at + 1;
        return Some(later[at].1.clone());
    }
    let keyword = instruction.split_whitespace().next().unwrap_or("");
    Some(
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => "starting from the runtime's image",
            "COPY" => "copying the code",
            "LABEL" => "labelling the image",
            _ => "preparing the image",
        }
        .to_string(),
    )
}

/// How much of a build's log is kept while it runs (its tail): a build prints what its
/// tenant's setup.py wants, so it is not kept whole.
const BUILD_LOG_KEPT: usize = 64 * 1024;
/// How much of a failed build's log its error carries (into the version's status).
const BUILD_LOG_REPORTED: usize = 8 * 1024;

/// Builds a function's image from an in-memory tar context (a Dockerfile plus the
/// unpacked bundle under `code/`) with the classic builder, whose `RUN` containers get
/// the limits' memory (= memory + swap), CPU quota, `/dev/shm` size and network (no
/// bind mounts, so no Docker socket). Past the deadline the build's stream is dropped:
/// the engine sees its client go, kills and removes the running step's container and
/// stops the build. On failure the error carries the log's tail.
pub(crate) async fn build_function_image(
    docker: &Docker,
    build: &FunctionBuild<'_>,
    context: Vec<u8>,
) -> Result<()> {
    let limits = build.limits;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(build.tag)
        .rm(true)
        .forcerm(true)
        .memory(limits.memory())
        .memswap(limits.memory())
        .cpuperiod(super::BUILD_CPU_PERIOD_US as i32)
        .cpuquota(limits.cpu_quota())
        .shmsize(limits.shm())
        .networkmode(&limits.network)
        .version(BuilderVersion::BuilderV1)
        .build();
    let mut log = LogTail::default();
    let mut next_step = 0;
    let failed = |log: &LogTail| {
        Error::InvalidBundle(format!(
            "building the function's image failed:\n{}",
            log.report()
        ))
    };
    let streamed = tokio::time::timeout_at(build.deadline.into(), async {
        let mut stream =
            docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(line) = info.stream {
                        if let Some((progress, names)) = build.progress {
                            if let Some(step) = step_name(&line, names, &mut next_step) {
                                progress.step(&step);
                            }
                            progress.log(&plain(&line));
                        }
                        log.push(&line);
                    }
                    if let Some(error) = info.error_detail.and_then(|d| d.message) {
                        log.push(&error);
                        return Err(failed(&log));
                    }
                }
                Err(e) => {
                    log.push(&e.to_string());
                    return Err(failed(&log));
                }
            }
        }
        Ok(())
    })
    .await;
    match streamed {
        Ok(built) => built,
        Err(_) => {
            tracing::warn!(
                image = build.tag,
                secs = limits.timeout.as_secs(),
                "image build cancelled at its deadline"
            );
            Err(Error::Deadline(format!(
                "the build ran past its deadline of {} s and was cancelled; its log ended \
                 with:\n{}",
                limits.timeout.as_secs(),
                log.report()
            )))
        }
    }
}

/// The tail of a build log, at most about [`BUILD_LOG_KEPT`] bytes.
#[derive(Default)]
struct LogTail {
    text: String,
    cut: bool,
}

impl LogTail {
    fn push(&mut self, chunk: &str) {
        self.text.push_str(chunk);
        if self.text.len() > 2 * BUILD_LOG_KEPT {
            let mut from = self.text.len() - BUILD_LOG_KEPT;
            while !self.text.is_char_boundary(from) {
                from += 1;
            }
            self.text.drain(..from);
            self.cut = true;
        }
    }

    /// The last 40 lines, at most [`BUILD_LOG_REPORTED`] bytes of them, as plain text.
    fn report(&self) -> String {
        let plain = plain(&self.text);
        let text = tail(plain.trim_end(), 40);
        if text.len() <= BUILD_LOG_REPORTED && !self.cut {
            return text;
        }
        let mut from = text.len().saturating_sub(BUILD_LOG_REPORTED);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        format!("[earlier lines cut]\n{}", &text[from..])
    }
}

/// `text` without terminal escapes (the engine colours a step's stderr) or other
/// control characters but newlines and tabs.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters... final byte in @..~; other escapes: one char.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether the engine has an image by this name.
pub(crate) async fn image_exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_image(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(docker_error("inspecting an image", e)),
    }
}

/// The engine's id of an image (changes whenever the image is rebuilt).
pub(crate) async fn image_id(docker: &Docker, name: &str) -> Result<String> {
    let inspect = docker
        .inspect_image(name)
        .await
        .map_err(|e| docker_error("inspecting an image", e))?;
    Ok(inspect.id.unwrap_or_default())
}

/// The mount points an image declares with `VOLUME`: the engine makes an anonymous
/// volume for each at create, unless something is mounted there already.
pub(crate) async fn image_volumes(docker: &Docker, name: &str) -> Result<Vec<String>> {
    let inspect = docker
        .inspect_image(name)
        .await
        .map_err(|e| docker_error("inspecting an image", e))?;
    Ok(inspect
        .config
        .and_then(|config| config.volumes)
        .unwrap_or_default())
}

/// Whether `reference` is a Docker image reference, by the engine's grammar
/// (distribution/reference):
///
/// ```text
/// reference  := name [ ":" tag ] [ "@sha256:" 64 lowercase hex ]
/// name       := [ domain "/" ] path ( "/" path )*        (at most 255 bytes)
/// domain     := host [ ":" port ]    host := label ( "." label )*
/// label      := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
/// path       := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
/// tag        := [\w][\w.-]{0,127}
/// ```
///
/// The first component is the registry's domain when it has a `.` or a `:`, is
/// `localhost`, or has an uppercase letter, as the engine decides. Only `sha256`
/// digests and no bracketed IPv6 hosts. What this refuses matters beyond tidiness:
/// bollard puts the name into the engine's URL paths unescaped, so a name such as
/// `x/../get?names=a` would reach other API routes, and the function image's
/// Dockerfile says `FROM <image>`.
pub(crate) fn valid_reference(reference: &str) -> bool {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let hex_ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !hex_ok {
            return false;
        }
    }
    // A tag is what follows the last ':' when no '/' follows it (a ':' before a '/'
    // is a registry's port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let tag_ok = (1..=128).contains(&tag.len())
            && word(tag.as_bytes()[0])
            && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
        if !tag_ok {
            return false;
        }
    }
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let mut paths = name.split('/').peekable();
    if let Some(first) = paths.next_if(|first| {
        name.contains('/')
            && (first.contains(['.', ':'])
                || *first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()))
    }) && !valid_domain(first)
    {
        return false;
    }
    paths.peek().is_some() && paths.all(valid_path_component)
}

/// `host[:port]`: dot-separated DNS labels, then an optional numeric port.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(label_ok)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by one of `.`, `_`, `__` or a run of `-`.
fn valid_path_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut rest = component.as_bytes();
    loop {
        let run = rest.iter().take_while(|b| alnum(b)).count();
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        if rest.is_empty() {
            return true;
        }
        let separator = rest.iter().take_while(|b| !alnum(b)).count();
        let ok = match &rest[..separator] {
            b"." | b"_" | b"__" => true,
            dashes => dashes.iter().all(|b| *b == b'-'),
        };
        if !ok {
            return false;
        }
        rest = &rest[separator..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_steps_are_named_from_the_engines_step_lines() {
        let names = vec![
            (
                "RUN pip3 install x".to_string(),
                "installing requirements".to_string(),
            ),
            (
                "RUN sleep 3".to_string(),
                "build step 1/2: sleep 3".to_string(),
            ),
            (
                "RUN sleep 3".to_string(),
                "build step 2/2: sleep 3".to_string(),
            ),
        ];
        let mut next = 0;
        let mut at = |line: &str| step_name(line, &names, &mut next);
        assert_eq!(
            at("Step 5/8 : RUN pip3 install x\n").unwrap(),
            "installing requirements"
        );
        // Two steps alike: each line is the next one.
        assert_eq!(
            at("Step 6/8 : RUN sleep 3").unwrap(),
            "build step 1/2: sleep 3"
        );
        assert_eq!(
            at("Step 7/8 : RUN sleep 3").unwrap(),
            "build step 2/2: sleep 3"
        );
        assert_eq!(
            at("Step 4/7 : COPY --chown=1:1 code/ /app/").unwrap(),
            "copying the code"
        );
        assert_eq!(
            at("Step 1/7 : FROM a").unwrap(),
            "starting from the runtime's image"
        );
        assert_eq!(at(" ---> Running in 3f2a"), None);
        assert_eq!(at("Collecting x"), None);
    }

    #[test]
    fn build_logs_keep_a_plain_bounded_tail() {
        let mut log = LogTail::default();
        log.push("Step 1/5 : FROM newt/python:3\n");
        log.push("\u{1b}[91mERROR: boom\r\n\u{1b}[0m");
        assert_eq!(log.report(), "Step 1/5 : FROM newt/python:3\nERROR: boom");
        // A build printing without end keeps only its tail, and reports less still.
        let mut flood = LogTail::default();
        for i in 0..100_000 {
            flood.push(&format!("line {i} {}\n", "é".repeat(20)));
        }
        assert!(flood.text.len() <= 2 * BUILD_LOG_KEPT);
        let report = flood.report();
        assert!(report.len() <= BUILD_LOG_REPORTED + 64, "{}", report.len());
        assert!(report.starts_with("[earlier lines cut]"));
        assert!(report.ends_with(&format!("line 99999 {}", "é".repeat(20))));
        let mut one_long_line = LogTail::default();
        one_long_line.push(&"x".repeat(1 << 20));
        assert!(one_long_line.report().len() <= BUILD_LOG_REPORTED + 64);
    }

    #[test]
    fn image_references_follow_the_engine_grammar() {
        let digest = format!("a@sha256:{}", "0123456789abcdef".repeat(4));
        let tagged_digest = format!("newt/python:3@sha256:{}", "f".repeat(64));
        for good in [
            "a",
            "newt/python:3",
            "python:3.12-slim",
            "localhost:5000/a/b:1.2",
            "localhost/a",
            "registry.example.com/team/app:v1_0-rc.2",
            "Registry.Example.com:443/app",
            "team/a.b__c-d---e/f_g:TAG",
            "a.b/c",
            "newt-fn/dice:0123456789abcdef",
            digest.as_str(),
            tagged_digest.as_str(),
        ] {
            assert!(valid_reference(good), "{good:?} should be valid");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = "a/".repeat(128) + "a";
        for bad in [
            "",
            "x/../get?names=a",
            "../../containers/json",
            "a/..",
            "..",
            "Ubuntu",
            "newt/Python:3",
            "a//b",
            "/a",
            "a/",
            "a:",
            ":3",
            "a:-x",
            "a:b:c",
            "a?b",
            "a#b",
            "a%2fb",
            "a b",
            "a\nb",
            "a..b",
            "a_.b",
            "a___b",
            "-a",
            "a-",
            "a@",
            "a@sha256:",
            "a@sha256:abc",
            "a@md5:0123456789abcdef0123456789abcdef",
            "host:port/a",
            "a.b__c/d",
            "-host.com/a",
            long_tag.as_str(),
            long_name.as_str(),
        ] {
            assert!(!valid_reference(bad), "{bad:?} should be refused");
        }
        // The 64 hex digits must be lowercase and exactly 64.
        assert!(!valid_reference(&format!("a@sha256:{}", "F".repeat(64))));
        assert!(!valid_reference(&format!("a@sha256:{}", "f".repeat(63))));
    }
}
