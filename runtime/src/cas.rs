//! Content-addressed store for bundles.
//!
//! A bundle is stored once, under its sha256, and never modified: the digest is the
//! name, so a deploy of the same bytes twice costs nothing and a version's bundle can
//! never change behind its back. Writes go to a temporary file that is synced and then
//! renamed, so a crash never leaves a half-written bundle under a valid name.

use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A sha256 digest as 64 lowercase hex characters. Constructed only from a hash or
/// after validation, so it is always safe to use as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(Sha256::digest(bytes)))
    }

    /// Parses a hex digest, refusing anything that is not exactly 64 hex characters.
    pub fn parse(s: &str) -> Option<Digest> {
        let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Digest(s.to_ascii_lowercase()))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One blob of the store, as [`Cas::list`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its digest (its name).
    pub digest: Digest,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was written, or last put again.
    pub modified: std::time::SystemTime,
}

/// The content store: a directory of immutable blobs named by digest.
#[derive(Clone, Debug)]
pub struct Cas {
    root: PathBuf,
}

impl Cas {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cas> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| Error::io("creating", &root, e))?;
        Ok(Cas { root })
    }

    /// Where the blob with this digest lives (it may not exist).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.as_str();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether the store holds this digest.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores `bytes` and returns their digest. Storing the same bytes again is a
    /// no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let dest = self.path(&digest);
        if dest.is_file() {
            // The blob is about to be referenced again (a redeploy of bytes a deleted
            // version left): make it young, so retention, which spares blobs written
            // within its grace period, cannot remove it between this put and the
            // deploy's version being stored. Best effort: the blob is there.
            let _ = std::fs::File::options()
                .write(true)
                .open(&dest)
                .and_then(|file| file.set_modified(std::time::SystemTime::now()));
            return Ok(digest);
        }
        let dir = dest.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        write_atomically(&self.root.join("tmp"), &dest, bytes)?;
        Ok(digest)
    }

    /// Every blob in the store, with its size and when it was last written (or put
    /// again). Files that are not blobs (a temporary file, a stray name) are skipped.
    pub fn list(&self) -> Result<Vec<StoredBlob>> {
        let root = self.root.join("sha256");
        let mut blobs = Vec::new();
        let shards = match std::fs::read_dir(&root) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(blobs),
            Err(e) => return Err(Error::io("listing", &root, e)),
        };
        for shard in shards {
            let shard = shard.map_err(|e| Error::io("listing", &root, e))?.path();
            let Ok(entries) = std::fs::read_dir(&shard) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(digest) = entry.file_name().to_str().and_then(Digest::parse) else {
                    continue;
                };
                // Only a blob stored under its own name, in its own shard.
                if self.path(&digest) != entry.path() {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                blobs.push(StoredBlob {
                    digest,
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                });
            }
        }
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(blobs)
    }

    /// Removes a blob; `Ok(false)` if there was none. Only retention calls this, for
    /// blobs no live version references.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("removing", path, e)),
        }
    }

    /// Reads a whole blob.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path(digest);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingBundle {
                digest: digest.to_string(),
            },
            _ => Error::io("reading", path, e),
        })
    }
}

/// Writes `bytes` to `dest` through a synced temporary file in `tmp_dir` and a rename,
/// so readers see either nothing or the whole file.
pub(crate) fn write_atomically(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp =
        tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| Error::io("creating", tmp_dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("writing", tmp.path().to_path_buf(), e))?;
    tmp.persist(dest)
        .map_err(|e| Error::io("renaming into", dest, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_idempotent_and_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let a = cas.put(b"hello").unwrap();
        let b = cas.put(b"hello").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.as_str(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(cas.get(&a).unwrap(), b"hello");
        assert!(cas.contains(&a));
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    /// A write that fails (here its rename: the full-disk case fails the write before
    /// it) leaves nothing: no temporary file, nothing under the name.
    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let dest = dir.path().join("missing-dir").join("blob");
        let err = write_atomically(&tmp, &dest, b"bytes").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(!dest.exists());
        assert!(std::fs::read_dir(&tmp).unwrap().next().is_none());
    }

    #[test]
    fn list_finds_blobs_and_remove_takes_them_out() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let a = cas.put(b"alpha").unwrap();
        let b = cas.put(b"beta!").unwrap();
        // Not blobs: a stray file in a shard, a temporary file.
        std::fs::write(cas.path(&a).with_file_name("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("tmp").join("partial"), b"x").unwrap();
        let listed = cas.list().unwrap();
        let mut expected = vec![(a.clone(), 5), (b.clone(), 5)];
        expected.sort();
        let found: Vec<_> = listed.iter().map(|s| (s.digest.clone(), s.bytes)).collect();
        assert_eq!(found, expected);
        assert!(cas.remove(&a).unwrap());
        assert!(!cas.remove(&a).unwrap());
        assert!(!cas.contains(&a));
        assert_eq!(cas.list().unwrap().len(), 1);
    }

    /// Putting bytes that are already stored makes their blob young again, so
    /// retention's grace period covers a redeploy of an unreferenced bundle.
    #[test]
    fn put_again_refreshes_the_blobs_time() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let a = cas.put(b"old bundle").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(cas.path(&a))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(cas.list().unwrap()[0].modified, old);
        cas.put(b"old bundle").unwrap();
        assert!(cas.list().unwrap()[0].modified > old);
    }

    #[test]
    fn digest_parse_refuses_paths() {
        assert!(Digest::parse("../../etc/passwd").is_none());
        assert!(Digest::parse(&"g".repeat(64)).is_none());
        assert!(Digest::parse(&"a".repeat(63)).is_none());
        assert!(Digest::parse(&"A".repeat(64)).is_some());
    }

    #[test]
    fn missing_blob_is_reported_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let d = Digest::of(b"absent");
        assert!(matches!(cas.get(&d), Err(Error::MissingBundle { .. })));
    }
}
