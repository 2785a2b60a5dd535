//! A function's directory as the server sees it: the files `newt deploy NAME DIR` and
//! `newt dev` pack into a `.tar.gz` bundle (in memory), and the walk `newt dev` watches.
//!
//! What is left out: hidden entries (`.git`, `.venv`, editor files), `__pycache__`
//! and, for a Rust crate, the top-level `target/`; symlinks are not followed (a link
//! could point anywhere on this machine; the bundle would carry what it points at). The
//! packer refuses, before uploading anything, a directory the server would refuse
//! anyway: more entries, more bytes in one file or in all, or a bigger archive than the
//! server's defaults accept ([`BundleLimits`], `newt serve --max-bundle-bytes`).
//!
//! The archive is deterministic (sorted names, zero timestamps and owners, fixed
//! modes): packing the same files twice gives the same bytes, so the server answers
//! "unchanged" instead of making a version, and `newt dev` can skip the upload.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use newt_runtime::BundleLimits;

use super::serve::DEFAULT_MAX_BUNDLE_BYTES;

/// Names never packed nor watched, besides hidden ones: Python's bytecode caches.
const SKIPPED_DIRS: &[&str] = &["__pycache__"];

/// What a directory may hold to be packed: the server's default limits.
#[derive(Clone, Debug)]
pub struct PackLimits {
    /// Limits on what the archive unpacks to (entries, bytes per file, bytes in all).
    pub bundle: BundleLimits,
    /// Largest archive, compressed: the server's default upload limit.
    pub max_packed_bytes: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            bundle: BundleLimits::default(),
            max_packed_bytes: DEFAULT_MAX_BUNDLE_BYTES,
        }
    }
}

/// One file found by [`walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the directory, with `/` separators: the name in the archive.
    pub name: String,
    /// Where it is on disk.
    pub path: PathBuf,
    /// Its size when walked.
    pub len: u64,
    /// Its modification time when walked (nanoseconds since the epoch; 0 if unknown).
    pub mtime_ns: u128,
}

/// The result of a [`walk`]: the files in name order, and what was left out and why
/// the user may want to know.
#[derive(Debug, Default)]
pub struct Walked {
    /// Regular files, sorted by name.
    pub files: Vec<Entry>,
    /// Directories entered (each is an entry of the unpacked bundle).
    pub dirs: usize,
    /// Symlinks left out, by name.
    pub skipped_links: Vec<String>,
}

/// A packed directory.
#[derive(Debug)]
pub struct Packed {
    /// The `.tar.gz` bytes.
    pub bytes: Vec<u8>,
    /// How many files it holds.
    pub files: usize,
    /// Symlinks left out, by name.
    pub skipped_links: Vec<String>,
}

/// Lists the files under `root` that a bundle of it holds, refusing more than
/// `max_entries` files and directories. `skip_target` also leaves out `root/target`
/// (a Rust crate's build output).
pub fn walk(root: &Path, skip_target: bool, max_entries: usize) -> Result<Walked> {
    let mut walked = Walked::default();
    // Depth first with an explicit stack: no recursion depth to blow on a deep tree.
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let listing =
            fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))?;
        for item in listing {
            let item = item.with_context(|| format!("could not list {}", dir.display()))?;
            let file_name = item.file_name();
            let Some(file_name) = file_name.to_str() else {
                bail!(
                    "{}: file names must be UTF-8 to go into a bundle",
                    item.path().display()
                );
            };
            if file_name.starts_with('.') || SKIPPED_DIRS.contains(&file_name) {
                continue;
            }
            if skip_target && prefix.is_empty() && file_name == "target" {
                continue;
            }
            let name = format!("{prefix}{file_name}");
            // The entry itself, not what a symlink points at.
            let meta = item
                .metadata()
                .with_context(|| format!("could not read {}", item.path().display()))?;
            if walked.files.len() + walked.dirs >= max_entries {
                bail!(
                    "{} holds more than {max_entries} files and directories (at {name:?}), \
                     the most a bundle may have: leave out what the function does not need",
                    root.display()
                );
            }
            if meta.is_dir() {
                walked.dirs += 1;
                stack.push((item.path(), format!("{name}/")));
            } else if meta.is_file() {
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                walked.files.push(Entry {
                    name,
                    path: item.path(),
                    len: meta.len(),
                    mtime_ns,
                });
            } else if meta.file_type().is_symlink() {
                walked.skipped_links.push(name);
            }
            // Sockets, fifos and devices are no part of a function's code.
        }
    }
    walked.files.sort_by(|a, b| a.name.cmp(&b.name));
    walked.skipped_links.sort();
    Ok(walked)
}

/// Packs the function directory `root` into a deterministic `.tar.gz` in memory, within
/// `limits`.
pub fn pack_dir(root: &Path, limits: &PackLimits) -> Result<Packed> {
    if !root.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let walked = walk(root, false, limits.bundle.max_entries)?;
    if walked.files.is_empty() {
        bail!(
            "{} has no files to deploy (hidden files and __pycache__ are left out)",
            root.display()
        );
    }
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    let mut total: u64 = 0;
    for entry in &walked.files {
        let body = read_bounded(&entry.path, limits.bundle.max_file_bytes)?;
        total += body.len() as u64;
        if total > limits.bundle.max_total_bytes {
            bail!(
                "{} holds more than {} bytes (at {:?}), the most a bundle may unpack to",
                root.display(),
                limits.bundle.max_total_bytes,
                entry.name
            );
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &entry.name, body.as_slice())
            .with_context(|| format!("packing {}", entry.path.display()))?;
        // Checked as the archive grows, so a huge directory fails early.
        let packed = tar.get_ref().get_ref().len();
        if packed > limits.max_packed_bytes {
            bail!(too_big(root, limits));
        }
    }
    let bytes = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .context("finishing the .tar.gz")?;
    if bytes.len() > limits.max_packed_bytes {
        bail!(too_big(root, limits));
    }
    Ok(Packed {
        bytes,
        files: walked.files.len(),
        skipped_links: walked.skipped_links,
    })
}

fn too_big(root: &Path, limits: &PackLimits) -> String {
    format!(
        "{} packs to more than {} bytes, the most the server accepts by default \
         (`newt serve --max-bundle-bytes`): leave out what the function does not need",
        root.display(),
        limits.max_packed_bytes
    )
}

/// Reads a file of at most `max` bytes; reading stops past `max`, so a file that grows
/// while it is read costs no more memory than that.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file =
        fs::File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut body = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut body)
        .with_context(|| format!("could not read {}", path.display()))?;
    if body.len() as u64 > max {
        bail!(
            "{} is larger than {max} bytes, the most one file of a bundle may hold",
            path.display()
        );
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, name: &str, body: &[u8]) {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }

    /// The names and contents in a packed bundle, as the server's unpacker sees them.
    fn unpacked(bytes: &[u8]) -> Vec<(String, String)> {
        let dest = tempfile::tempdir().unwrap();
        newt_runtime::unpack(bytes, dest.path(), &BundleLimits::default()).unwrap();
        let walked = walk(dest.path(), false, 100).unwrap();
        walked
            .files
            .iter()
            .map(|e| (e.name.clone(), fs::read_to_string(&e.path).unwrap()))
            .collect()
    }

    #[test]
    fn packs_code_and_leaves_out_hidden_files_caches_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "main.py", b"def handler(e):\n    return e\n");
        write(root, "requirements.txt", b"# none\n");
        write(root, "lib/util.py", b"X = 1\n");
        write(root, ".git/config", b"[core]\n");
        write(root, ".env", b"SECRET=1\n");
        write(root, "lib/.hidden.py", b"");
        write(root, "__pycache__/main.cpython-312.pyc", b"\0");
        write(root, "lib/__pycache__/util.cpython-312.pyc", b"\0");
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();

        let packed = pack_dir(root, &PackLimits::default()).unwrap();
        assert_eq!(packed.files, 3);
        assert_eq!(packed.skipped_links, vec!["passwd".to_string()]);
        assert_eq!(
            unpacked(&packed.bytes),
            vec![
                ("lib/util.py".into(), "X = 1\n".into()),
                ("main.py".into(), "def handler(e):\n    return e\n".into()),
                ("requirements.txt".into(), "# none\n".into()),
            ]
        );
    }

    #[test]
    fn same_files_pack_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "main.py", b"x = 1\n");
        write(dir.path(), "a/b.py", b"y = 2\n");
        let first = pack_dir(dir.path(), &PackLimits::default()).unwrap();
        // A save that does not change the contents changes only the mtime.
        write(dir.path(), "main.py", b"x = 1\n");
        let second = pack_dir(dir.path(), &PackLimits::default()).unwrap();
        assert_eq!(first.bytes, second.bytes);
        write(dir.path(), "main.py", b"x = 2\n");
        let third = pack_dir(dir.path(), &PackLimits::default()).unwrap();
        assert_ne!(first.bytes, third.bytes);
    }

    #[test]
    fn over_size_directories_are_refused_before_upload() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "main.py", b"pass\n");
        write(dir.path(), "big.bin", &[7u8; 2048]);
        let limits = |f: &dyn Fn(&mut PackLimits)| {
            let mut limits = PackLimits::default();
            f(&mut limits);
            limits
        };

        let one_file = limits(&|l| l.bundle.max_file_bytes = 1024);
        let error = pack_dir(dir.path(), &one_file).unwrap_err().to_string();
        assert!(
            error.contains("big.bin is larger than 1024 bytes"),
            "{error}"
        );

        let all = limits(&|l| l.bundle.max_total_bytes = 2050);
        let error = pack_dir(dir.path(), &all).unwrap_err().to_string();
        assert!(error.contains("more than 2050 bytes"), "{error}");

        let entries = limits(&|l| l.bundle.max_entries = 1);
        let error = pack_dir(dir.path(), &entries).unwrap_err().to_string();
        assert!(
            error.contains("more than 1 files and directories"),
            "{error}"
        );

        // Random bytes do not compress: the archive outgrows a 1 KiB upload limit.
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        write(dir.path(), "big.bin", &noise);
        let packed = limits(&|l| l.max_packed_bytes = 1024);
        let error = pack_dir(dir.path(), &packed).unwrap_err().to_string();
        assert!(error.contains("packs to more than 1024 bytes"), "{error}");
    }

    #[test]
    fn empty_directories_and_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ".hidden", b"");
        let error = pack_dir(dir.path(), &PackLimits::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no files to deploy"), "{error}");
        let file = dir.path().join(".hidden");
        let error = pack_dir(&file, &PackLimits::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not a directory"), "{error}");
    }

    #[test]
    fn a_crate_walk_leaves_out_its_target_dir_only_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "Cargo.toml", b"");
        write(dir.path(), "src/main.rs", b"");
        write(dir.path(), "src/target/mod.rs", b"");
        write(dir.path(), "target/release/x.wasm", b"");
        let names: Vec<String> = walk(dir.path(), true, 100)
            .unwrap()
            .files
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["Cargo.toml", "src/main.rs", "src/target/mod.rs"]);
    }
}
