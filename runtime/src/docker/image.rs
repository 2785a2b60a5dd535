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
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ListImagesOptionsBuilder,
};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

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

fn docker_error(action: &str, e: bollard::errors::Error) -> Error {
    Error::Internal(anyhow::anyhow!("{action}: {e}"))
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

/// Builds a function's image from an in-memory tar context (a Dockerfile plus the
/// unpacked bundle under `code/`). Returns the build log; on failure the error
/// carries its tail.
pub(crate) async fn build_function_image(
    docker: &Docker,
    tag: &str,
    labels: &HashMap<String, String>,
    context: Vec<u8>,
) -> Result<String> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(labels)
        .build();
    let mut log = String::new();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(line) = info.stream {
                    log.push_str(&line);
                }
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    log.push_str(&error);
                    return Err(Error::InvalidBundle(format!(
                        "building the function's image failed:\n{}",
                        tail(&log, 40)
                    )));
                }
            }
            Err(e) => {
                log.push_str(&e.to_string());
                return Err(Error::InvalidBundle(format!(
                    "building the function's image failed:\n{}",
                    tail(&log, 40)
                )));
            }
        }
    }
    Ok(log)
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
