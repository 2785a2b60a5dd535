//! On-disk cache of compiled modules and components.
//!
//! Compiling a Rust guest takes ~150 ms; loading the serialized artifact takes ~0.2 ms
//! (it is mmapped). Artifacts are named by bundle digest and engine fingerprint: an
//! artifact only loads into an engine built with the same `Config` and wasmtime
//! version, so a change of either simply misses the cache instead of failing.

use sha2::{Digest as _, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use crate::cas::{Digest, write_atomically};
use crate::error::{Error, Result};

/// Compiled artifacts in one directory.
#[derive(Clone, Debug)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
    fingerprint: String,
}

/// What a bundle compiles to: a WASI preview 1 module or a component (wasi:http).
/// The cache, the executor's prepared versions and its instances each hold one of the
/// two, not two code paths.
#[derive(Clone)]
pub(crate) enum Artifact {
    Module(Module),
    Component(Component),
}

/// One compiled artifact in the cache, as [`ModuleCache::list`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedArtifact {
    /// Its file name in the cache directory (`DIGEST-FINGERPRINT.cwasm`): what
    /// removing it takes.
    pub file: String,
    /// The digest of the bundle it was compiled from.
    pub digest: Digest,
    /// Whether this process's engine can load it (same fingerprint); `false`: an
    /// artifact of another wasmtime version or configuration, never loaded again.
    pub current_engine: bool,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was written.
    pub modified: std::time::SystemTime,
}

/// Whether a module came from the cache or was compiled now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Cache,
    Compiled,
}

impl ModuleCache {
    pub(crate) fn open(dir: PathBuf, engine: &Engine) -> Result<Self> {
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| Error::io("creating", &dir, e))?;
        Ok(ModuleCache {
            dir,
            fingerprint: fingerprint(engine),
        })
    }

    fn artifact(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.as_str(), self.fingerprint))
    }

    /// Every compiled artifact in the cache, of any engine fingerprint. Files that do
    /// not have an artifact's name (the temporary directory, a stray file) are skipped.
    pub(crate) fn list(&self) -> Result<Vec<CachedArtifact>> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))?;
        let mut artifacts = Vec::new();
        for entry in entries.flatten() {
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((digest, fingerprint)) = file
                .strip_suffix(".cwasm")
                .and_then(|stem| stem.split_once('-'))
            else {
                continue;
            };
            let Some(digest) = Digest::parse(digest) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            artifacts.push(CachedArtifact {
                current_engine: fingerprint == self.fingerprint,
                file,
                digest,
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
            });
        }
        artifacts.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(artifacts)
    }

    /// Removes one artifact by its file name (as [`ModuleCache::list`] gives it);
    /// `Ok(false)` if there was none. A name that is not an artifact's is refused, so
    /// nothing outside the cache's own files can be named.
    pub(crate) fn remove(&self, file: &str) -> Result<bool> {
        let is_artifact = file
            .strip_suffix(".cwasm")
            .and_then(|stem| stem.split_once('-'))
            .is_some_and(|(digest, fingerprint)| {
                Digest::parse(digest).is_some()
                    && !fingerprint.is_empty()
                    && fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
            });
        if !is_artifact {
            return Err(Error::Internal(anyhow::anyhow!(
                "{file:?} is not a compiled artifact's name"
            )));
        }
        let path = self.dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("removing", path, e)),
        }
    }

    /// Loads the module or component for `digest` from the cache, or compiles `bundle`
    /// and stores the result. Blocking: call from a blocking thread.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bundle: &Path,
    ) -> Result<(Artifact, Source)> {
        let artifact = self.artifact(digest);
        if artifact.is_file() {
            // The artifact's header says which of the two it holds.
            let loaded = match Engine::detect_precompiled_file(&artifact) {
                // SAFETY (both): the artifact was written by this cache (through a temp
                // file and a rename, so never partially) from `serialize` of an engine
                // with the same fingerprint; nothing else writes into newt's cache.
                Ok(Some(Precompiled::Module)) => {
                    unsafe { Module::deserialize_file(engine, &artifact) }.map(Artifact::Module)
                }
                Ok(Some(Precompiled::Component)) => {
                    unsafe { Component::deserialize_file(engine, &artifact) }
                        .map(Artifact::Component)
                }
                Ok(None) => Err(wasmtime::Error::msg("not a compiled artifact")),
                Err(e) => Err(e),
            };
            match loaded {
                Ok(loaded) => return Ok((loaded, Source::Cache)),
                Err(e) => {
                    tracing::warn!(path = %artifact.display(), "unusable cached module, recompiling: {e:#}");
                }
            }
        }
        let bytes = std::fs::read(bundle).map_err(|e| Error::io("reading", bundle, e))?;
        let compiled = compile(engine, &bytes)?;
        let serialized = match &compiled {
            Artifact::Module(module) => module.serialize(),
            Artifact::Component(component) => component.serialize(),
        }
        .map_err(|e| Error::Internal(anyhow::anyhow!("serializing module: {e}")))?;
        if let Err(e) = write_atomically(&self.dir.join("tmp"), &artifact, &serialized) {
            // The cache is an optimisation: a module that compiled runs, so a cache we
            // cannot write (a full disk, say) only costs a compile after a restart; it
            // must not fail the deploy or the call. The write leaves no partial file.
            tracing::warn!(
                %digest,
                "could not cache the compiled module (it runs; the next start compiles it \
                 again): {e}"
            );
        }
        Ok((compiled, Source::Compiled))
    }
}

/// Compiles wasm bytes (a module or a component), turning compiler errors into a
/// message for the deployer.
pub(crate) fn compile(engine: &Engine, bytes: &[u8]) -> Result<Artifact> {
    if !bytes.starts_with(b"\0asm") {
        return Err(Error::InvalidBundle(
            "not a WebAssembly module (it does not start with the \\0asm magic bytes)".into(),
        ));
    }
    if is_component(bytes) {
        return Component::new(engine, bytes)
            .map(Artifact::Component)
            .map_err(|e| Error::InvalidBundle(format!("component does not compile: {e:#}")));
    }
    Module::new(engine, bytes)
        .map(Artifact::Module)
        .map_err(|e| Error::InvalidBundle(format!("module does not compile: {e:#}")))
}

/// A component has the same magic as a module but layer 1 in bytes 6..8 of the header
/// (what `wasmparser::Parser::is_component` checks).
pub(crate) fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[6..8] == [1, 0]
}

/// A short, stable name for everything that makes an artifact loadable.
fn fingerprint(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache lists its artifacts, telling this engine's from another's, and
    /// removes only artifacts by name.
    #[test]
    fn list_tells_current_artifacts_from_stale_ones() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path().join("cache"), &engine).unwrap();
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let bundle = dir.path().join("bundle.wasm");
        std::fs::write(&bundle, &wasm).unwrap();
        let digest = Digest::of(&wasm);
        cache.load_or_compile(&engine, &digest, &bundle).unwrap();
        let stale = format!("{}-00112233aabbccdd.cwasm", digest.as_str());
        std::fs::write(dir.path().join("cache").join(&stale), b"old").unwrap();
        std::fs::write(dir.path().join("cache").join("README"), b"not mine").unwrap();

        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        let current: Vec<_> = listed.iter().filter(|a| a.current_engine).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].digest, digest);
        assert!(current[0].bytes > 0);
        let old = listed.iter().find(|a| !a.current_engine).unwrap();
        assert_eq!((old.file.as_str(), old.bytes), (stale.as_str(), 3));

        assert!(cache.remove(&stale).unwrap());
        assert!(!cache.remove(&stale).unwrap());
        assert!(cache.remove("README").is_err());
        assert!(cache.remove("../newt.db").is_err());
        assert_eq!(cache.list().unwrap().len(), 1);
    }

    /// A cache directory that cannot take the artifact (here its temporary directory
    /// is a file; on a full disk the write fails) still gives the compiled module.
    #[test]
    fn an_unwritable_cache_still_compiles() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path().join("cache"), &engine).unwrap();
        std::fs::remove_dir(dir.path().join("cache/tmp")).unwrap();
        std::fs::write(dir.path().join("cache/tmp"), b"not a directory").unwrap();
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let bundle = dir.path().join("bundle.wasm");
        std::fs::write(&bundle, &wasm).unwrap();
        let digest = Digest::of(&wasm);

        for _ in 0..2 {
            let (module, source) = cache.load_or_compile(&engine, &digest, &bundle).unwrap();
            assert_eq!(source, Source::Compiled);
            let Artifact::Module(module) = module else {
                panic!("a core module compiled as a component")
            };
            assert!(module.get_export("_start").is_some());
        }
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            entries,
            vec![std::ffi::OsString::from("tmp")],
            "no artifact"
        );
    }
}
