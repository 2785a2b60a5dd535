//! Egress for containers: each instance that may need it gets a host directory,
//! bind-mounted read-only at [`MOUNT_POINT`], where its own egress proxy listens.
//!
//! Containers keep `network_mode: none`; the only way out is the unix socket
//! `/run/newt/egress.sock`, served on the host by an [`EgressProxy`] holding the
//! function's allow-list. A function-level instance of a function with a list gets
//! its directory and proxy before it starts. A runtime-level instance cannot know its
//! function yet: it gets an empty directory at create time, and the proxy's socket
//! appears in it when a function with a list is loaded (a bind-mounted directory shows
//! files created later), so egress never forces a cold start. The directory, and
//! with it the proxy, lives exactly as long as the instance.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::egress::{AllowList, EgressProxy, EgressStats};
use crate::error::{Error, Result};

/// Where an instance's directory is mounted in its container.
pub(crate) const MOUNT_POINT: &str = "/run/newt";
/// The proxy's socket in that directory.
const SOCKET_NAME: &str = "egress.sock";
/// The socket as the agent sees it.
pub(crate) const CONTAINER_SOCKET: &str = "/run/newt/egress.sock";
/// Longest path a unix socket may have (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Length of an instance directory's name (random hex).
const DIR_NAME_LEN: usize = 12;

/// Where the instance directories of one executor live, created on first use.
#[derive(Debug)]
pub(crate) struct EgressDirs {
    preferred: PathBuf,
    base: Mutex<Option<Base>>,
}

/// The directory instance directories are made in.
#[derive(Debug)]
enum Base {
    /// Under the executor's work dir (`$NEWT_HOME/docker/egress`), 0700.
    Home(PathBuf),
    /// The work dir's path is too long for a socket path: a private temporary
    /// directory instead, removed with the executor.
    Temp(tempfile::TempDir),
}

impl Base {
    fn path(&self) -> &Path {
        match self {
            Base::Home(path) => path,
            Base::Temp(dir) => dir.path(),
        }
    }
}

/// Whether an instance directory in `base` leaves room for the socket's name.
fn fits(base: &Path) -> bool {
    base.as_os_str().len() + 1 + DIR_NAME_LEN + 1 + SOCKET_NAME.len() <= MAX_SOCKET_PATH
}

impl EgressDirs {
    /// Instance directories under `work_dir/egress`.
    pub(crate) fn new(work_dir: &Path) -> EgressDirs {
        EgressDirs {
            preferred: work_dir.join("egress"),
            base: Mutex::new(None),
        }
    }

    /// The base directory, made on first use. What a previous process left in it
    /// (its instances are gone: their containers are removed at start) is removed.
    /// The base is 0700: no other user of this host can reach a proxy's socket, while
    /// the engine (root) mounts the instance directory below it all the same.
    fn base(&self) -> Result<PathBuf> {
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(base) = base.as_ref() {
            return Ok(base.path().to_path_buf());
        }
        let made = if fits(&self.preferred) {
            let path = &self.preferred;
            if path.exists() {
                std::fs::remove_dir_all(path).map_err(|e| Error::io("clearing", path, e))?;
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| Error::io("creating", path, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("narrowing the permissions of", path, e))?;
            Base::Home(path.clone())
        } else {
            let temp = std::env::temp_dir();
            let dir = tempfile::Builder::new()
                .prefix("newt-egress-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir_in(&temp)
                .map_err(|e| Error::io("creating a directory for egress sockets in", &temp, e))?;
            if !fits(dir.path()) {
                return Err(Error::InstanceStart(format!(
                    "no directory short enough for an egress socket: {} and {} are too long \
                     for a unix socket path ({MAX_SOCKET_PATH} bytes); use a shorter \
                     NEWT_HOME or TMPDIR",
                    self.preferred.display(),
                    dir.path().display()
                )));
            }
            tracing::info!(
                dir = %dir.path().display(),
                "the work dir's path is too long for egress sockets; using a temporary directory"
            );
            Base::Temp(dir)
        };
        let path = made.path().to_path_buf();
        *base = Some(made);
        Ok(path)
    }

    /// A new, empty instance directory (mode 0755, so the container's user can reach
    /// the socket in it).
    pub(crate) fn instance(&self) -> Result<InstanceEgress> {
        let base = self.base()?;
        // The tail of a v7 uuid is random (its head is the time).
        let name = uuid::Uuid::now_v7().simple().to_string();
        let dir = base.join(&name[name.len() - DIR_NAME_LEN..]);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|e| Error::io("creating", &dir, e))?;
        // The umask may have narrowed it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("setting the permissions of", &dir, e))?;
        Ok(InstanceEgress { dir, proxy: None })
    }
}

/// One instance's egress: its directory and, once its function has a list, the proxy
/// listening there. Dropping it stops the proxy (closing its tunnels) and removes the
/// directory.
#[derive(Debug)]
pub(crate) struct InstanceEgress {
    dir: PathBuf,
    proxy: Option<EgressProxy>,
}

impl InstanceEgress {
    /// The host directory to mount at [`MOUNT_POINT`].
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the instance's proxy enforcing `allow`; an empty list starts none (the
    /// function has no network at all).
    pub(crate) fn serve(&mut self, allow: &Arc<AllowList>, stats: &Arc<EgressStats>) -> Result<()> {
        if allow.is_empty() || self.proxy.is_some() {
            return Ok(());
        }
        let path = self.dir.join(SOCKET_NAME);
        let proxy = EgressProxy::start(&path, allow.clone(), stats.clone())
            .map_err(|e| Error::io("starting the egress proxy at", &path, e))?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// The socket's path in the container, when a proxy serves this instance.
    pub(crate) fn container_socket(&self) -> Option<&'static str> {
        self.proxy.as_ref().map(|_| CONTAINER_SOCKET)
    }
}

impl Drop for InstanceEgress {
    fn drop(&mut self) {
        // The proxy first: it removes its socket and aborts its connections.
        self.proxy = None;
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(dir = %self.dir.display(), "removing an egress directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn an_instance_directory_holds_a_proxy_only_for_a_list_and_goes_with_it() {
        let work = tempfile::tempdir().unwrap();
        let dirs = EgressDirs::new(work.path());
        let stats = Arc::new(EgressStats::default());

        let mut bare = dirs.instance().unwrap();
        let base = work.path().join("egress");
        assert_eq!(std::fs::metadata(&base).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(bare.dir()).unwrap().mode() & 0o777, 0o755);
        bare.serve(&Arc::new(AllowList::default()), &stats).unwrap();
        assert_eq!(bare.container_socket(), None);
        assert_eq!(std::fs::read_dir(bare.dir()).unwrap().count(), 0);

        let mut served = dirs.instance().unwrap();
        assert_ne!(served.dir(), bare.dir());
        let list = Arc::new(AllowList::parse(&["127.0.0.2:8080"]).unwrap());
        served.serve(&list, &stats).unwrap();
        assert_eq!(served.container_socket(), Some(CONTAINER_SOCKET));
        let socket = served.dir().join(SOCKET_NAME);
        assert!(socket.exists());
        assert!(socket.as_os_str().len() <= MAX_SOCKET_PATH);
        // A refusal through it: the proxy is the function's.
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"CONNECT 127.0.0.3:80 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

        let (bare_dir, served_dir) = (bare.dir().to_path_buf(), served.dir().to_path_buf());
        drop(bare);
        drop(served);
        assert!(!bare_dir.exists() && !served_dir.exists());
        assert!(tokio::net::UnixStream::connect(&socket).await.is_err());

        // A new executor on the same home clears what the last one left.
        let leftover = dirs.instance().unwrap();
        let leftover_dir = leftover.dir().to_path_buf();
        std::mem::forget(leftover);
        let again = EgressDirs::new(work.path());
        let fresh = again.instance().unwrap();
        assert!(!leftover_dir.exists());
        assert!(fresh.dir().exists());
    }

    #[test]
    fn a_home_too_long_for_a_socket_path_uses_a_private_temporary_directory() {
        let work = tempfile::tempdir().unwrap();
        let deep = work.path().join("d".repeat(100));
        assert!(!fits(&deep.join("egress")));
        let dirs = EgressDirs::new(&deep);
        let instance = dirs.instance().unwrap();
        let socket = instance.dir().join(SOCKET_NAME);
        assert!(socket.as_os_str().len() <= MAX_SOCKET_PATH, "{socket:?}");
        assert!(!deep.exists(), "nothing is made under the long home");
        let base = instance.dir().parent().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&base).unwrap().mode() & 0o777, 0o700);
        drop(instance);
        drop(dirs);
        assert!(!base.exists(), "the temporary base goes with the executor");
    }
}
