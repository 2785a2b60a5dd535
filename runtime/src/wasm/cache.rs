//! On-disk cache of compiled modules.
//!
//! Compiling a Rust guest takes ~150 ms; loading the serialized artifact takes ~0.2 ms
//! (it is mmapped). Artifacts are named by bundle digest and engine fingerprint: an
//! artifact only loads into an engine built with the same `Config` and wasmtime
//! version, so a change of either simply misses the cache instead of failing.

use sha2::{Digest as _, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::{Engine, Module};

use crate::cas::{Digest, write_atomically};
use crate::error::{Error, Result};

/// Compiled artifacts in one directory.
#[derive(Clone, Debug)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
    fingerprint: String,
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

    /// Loads the module for `digest` from the cache, or compiles `bundle` and stores
    /// the result. Blocking: call from a blocking thread.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bundle: &Path,
    ) -> Result<(Module, Source)> {
        let artifact = self.artifact(digest);
        if artifact.is_file() {
            // SAFETY: the artifact was written by this cache (through a temp file and a
            // rename, so never partially) from `Module::serialize` of an engine with
            // the same fingerprint; nothing else writes into newt's cache directory.
            match unsafe { Module::deserialize_file(engine, &artifact) } {
                Ok(module) => return Ok((module, Source::Cache)),
                Err(e) => {
                    tracing::warn!(path = %artifact.display(), "unusable cached module, recompiling: {e:#}");
                }
            }
        }
        let bytes = std::fs::read(bundle).map_err(|e| Error::io("reading", bundle, e))?;
        let module = compile(engine, &bytes)?;
        let serialized = module
            .serialize()
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
        Ok((module, Source::Compiled))
    }
}

/// Compiles wasm bytes, turning compiler errors into a message for the deployer.
pub(crate) fn compile(engine: &Engine, bytes: &[u8]) -> Result<Module> {
    if !bytes.starts_with(b"\0asm") {
        return Err(Error::InvalidBundle(
            "not a WebAssembly module (it does not start with the \\0asm magic bytes)".into(),
        ));
    }
    if is_component(bytes) {
        return Err(Error::InvalidBundle(
            "this is a WebAssembly component; newt runs WASI preview 1 modules: build with \
             --target wasm32-wasip1"
                .into(),
        ));
    }
    Module::new(engine, bytes)
        .map_err(|e| Error::InvalidBundle(format!("module does not compile: {e:#}")))
}

/// A component has the same magic but layer 1 in bytes 6..8 of the header.
fn is_component(bytes: &[u8]) -> bool {
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
