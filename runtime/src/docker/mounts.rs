//! Read-only mounts of host paths into a runtime's containers (a model cache, a
//! reference data set), limited to the directories the operator allowed at start
//! (`newt serve --allow-mount DIR`).
//!
//! Whoever may register a runtime names the host path, so it is checked the way an
//! attacker would try it: the path is canonicalized (symlinks resolved, `..` gone)
//! and must then lie under a canonicalized allowed directory. It is checked when the
//! runtime is registered (a refusal is a 422 naming the allowed directories) and again
//! each time a container starts, so a runtime stored before the operator narrowed the
//! list, or a symlink changed since, is refused then (503), never mounted. The mount is
//! always read-only, and never over the places newt itself relies on inside a container.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// Most mounts a runtime may have.
const MAX_MOUNTS: usize = 16;
/// Longest path accepted, host or container.
const MAX_PATH_BYTES: usize = 1024;
/// Container paths a mount may not be at, over or under: the root, the kernel's and
/// the engine's file systems, the writable scratch space and the egress socket.
const RESERVED_CONTAINER_PATHS: [&str; 5] = ["/run/newt", "/tmp", "/proc", "/sys", "/dev"];

/// A host path mounted read-only into every container of a runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeMount {
    /// The host path: under a directory given to `newt serve --allow-mount`.
    pub host: String,
    /// Where it appears in the container: an absolute path outside the function's
    /// code folder and newt's own places.
    pub container: String,
}

/// Checks the spelling of a runtime's mounts (what can be checked without the host's
/// file system): `workdir` is the runtime's `path`, where function code goes.
pub(crate) fn validate(mounts: &[RuntimeMount], workdir: &str) -> Result<(), String> {
    if mounts.len() > MAX_MOUNTS {
        return Err(format!(
            "a runtime may have at most {MAX_MOUNTS} mounts, got {}",
            mounts.len()
        ));
    }
    for (i, mount) in mounts.iter().enumerate() {
        for (what, path) in [("host", &mount.host), ("container", &mount.container)] {
            if !is_plain_absolute(path) {
                return Err(format!(
                    "mount {}: the {what} path must be absolute, without `.` or `..`, \
                     control characters or more than {MAX_PATH_BYTES} bytes, got {:?}",
                    i + 1,
                    path.chars().take(80).collect::<String>()
                ));
            }
        }
        let target = mount.container.trim_end_matches('/');
        if target.is_empty() {
            return Err(format!(
                "mount {}: cannot mount over the container's root `/`",
                i + 1
            ));
        }
        let workdir = workdir.trim_end_matches('/');
        for reserved in RESERVED_CONTAINER_PATHS.iter().copied().chain([workdir]) {
            if overlaps(target, reserved) {
                return Err(format!(
                    "mount {}: container path {target} overlaps {reserved}, which newt uses \
                     (the function's code is at the runtime's path; /run/newt, /tmp, /proc, \
                     /sys and /dev are the container's own): pick another path, e.g. /data",
                    i + 1
                ));
            }
        }
        if mounts[..i]
            .iter()
            .any(|m| m.container.trim_end_matches('/') == target)
        {
            return Err(format!(
                "mount {}: container path {target} is given twice",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Absolute, at most [`MAX_PATH_BYTES`], no control characters, no `.` or `..`.
fn is_plain_absolute(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= MAX_PATH_BYTES
        && !path.chars().any(char::is_control)
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.split('/').any(|part| part == "." || part == "..")
}

/// Whether one path is the other or lies under it (either way round).
fn overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}/"));
    under(a, b) || under(b, a)
}

/// Canonicalizes the directories an operator allows (each must exist).
pub(crate) fn canonical_allowed(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    dirs.iter()
        .map(|dir| {
            let canonical = dir
                .canonicalize()
                .map_err(|e| format!("--allow-mount {}: {e}", dir.display()))?;
            if !canonical.is_dir() {
                return Err(format!("--allow-mount {}: not a directory", dir.display()));
            }
            Ok(canonical)
        })
        .collect()
}

/// The host paths to bind, canonicalized, each with its container path; refused when
/// one does not exist or does not lie under an allowed directory.
pub(crate) fn resolve(
    mounts: &[RuntimeMount],
    allowed: &[PathBuf],
) -> Result<Vec<(PathBuf, String)>, String> {
    let allowed_list = || {
        if allowed.is_empty() {
            "none are: start `newt serve` with `--allow-mount DIR` to allow one".to_string()
        } else {
            let dirs: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
            format!("the allowed directories are {}", dirs.join(", "))
        }
    };
    mounts
        .iter()
        .map(|mount| {
            let canonical = Path::new(&mount.host).canonicalize().map_err(|e| {
                format!(
                    "mount {} -> {}: the host path cannot be resolved ({e})",
                    mount.host, mount.container
                )
            })?;
            // Compared component by component: `/srv/models-evil` is not under `/srv/models`.
            if !allowed.iter().any(|dir| canonical.starts_with(dir)) {
                let resolved = if canonical != Path::new(&mount.host) {
                    format!(" (it resolves to {})", canonical.display())
                } else {
                    String::new()
                };
                return Err(format!(
                    "mount {} -> {}: the host path{resolved} is not under a directory the \
                     operator allowed; {}",
                    mount.host,
                    mount.container,
                    allowed_list()
                ));
            }
            Ok((canonical, mount.container.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &str, container: &str) -> RuntimeMount {
        RuntimeMount {
            host: host.into(),
            container: container.into(),
        }
    }

    #[test]
    fn container_paths_stay_clear_of_newts_own() {
        validate(&[mount("/srv/models", "/models")], "/app").unwrap();
        validate(
            &[mount("/srv/a", "/data/a"), mount("/srv/b", "/data/b")],
            "/app",
        )
        .unwrap();
        for (m, workdir) in [
            (mount("/srv/models", "/"), "/app"),
            (mount("/srv/models", "/app"), "/app"),
            (mount("/srv/models", "/app/models"), "/app"),
            (mount("/srv/models", "/srv"), "/srv/fn"),
            (mount("/srv/models", "/run/newt"), "/app"),
            (mount("/srv/models", "/run"), "/app"),
            (mount("/srv/models", "/tmp/x"), "/app"),
            (mount("/srv/models", "/proc"), "/app"),
            (mount("/srv/models", "/sys/fs"), "/app"),
            (mount("/srv/models", "/dev/shm"), "/app"),
            (mount("/srv/models", "models"), "/app"),
            (mount("/srv/models", "/data/../app"), "/app"),
            (mount("/srv/models", "/data/./x"), "/app"),
            (mount("srv/models", "/models"), "/app"),
            (mount("/srv/../etc", "/models"), "/app"),
            (mount("/srv/models\n", "/models"), "/app"),
        ] {
            assert!(
                validate(std::slice::from_ref(&m), workdir).is_err(),
                "{m:?} {workdir}"
            );
        }
        let twice = [mount("/srv/a", "/data"), mount("/srv/b", "/data/")];
        assert!(validate(&twice, "/app").unwrap_err().contains("twice"));
    }

    #[test]
    fn host_paths_must_resolve_under_an_allowed_directory() {
        let root = tempfile::tempdir().unwrap();
        let allowed_dir = root.path().join("models");
        let outside = root.path().join("secret");
        std::fs::create_dir_all(allowed_dir.join("small")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed_dir.join("escape")).unwrap();
        std::fs::create_dir_all(root.path().join("models-evil")).unwrap();
        let allowed = canonical_allowed(std::slice::from_ref(&allowed_dir)).unwrap();

        let inside = mount(allowed_dir.join("small").to_str().unwrap(), "/models");
        let resolved = resolve(&[inside], &allowed).unwrap();
        assert_eq!(resolved[0].0, allowed[0].join("small"));

        for host in [
            outside.clone(),
            allowed_dir.join("escape"),
            root.path().join("models-evil"),
            allowed_dir.join("missing"),
        ] {
            let err = resolve(&[mount(host.to_str().unwrap(), "/models")], &allowed).unwrap_err();
            assert!(err.contains("mount "), "{host:?}: {err}");
        }
        let err = resolve(
            &[mount(allowed_dir.join("escape").to_str().unwrap(), "/m")],
            &allowed,
        )
        .unwrap_err();
        assert!(
            err.contains("resolves to") && err.contains("allowed directories are"),
            "{err}"
        );
        let none = resolve(&[mount(outside.to_str().unwrap(), "/m")], &[]).unwrap_err();
        assert!(none.contains("--allow-mount"), "{none}");
        assert!(canonical_allowed(&[root.path().join("nope")]).is_err());
    }
}
