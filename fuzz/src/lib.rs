//! What newt's fuzz targets share: seed corpora, the tar checksum fix-up, the checks
//! on an unpacked tree, the in-process app, and splitting an input into sections.
//!
//! Run the targets with `scripts/fuzz.sh TARGET SECONDS` (or `all`); it sets
//! `NEWT_FUZZ_SEEDS` so each target writes its seeds into its corpus before starting.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use newt_runtime::{BundleLimits, Unpacked};
use tower::ServiceExt;

pub mod seeds;

/// Writes `seeds` into the directory named by `NEWT_FUZZ_SEEDS`, if it is set, each
/// under a name derived from its bytes (so writing them again changes nothing). Called
/// from each target's `init`, which runs before libFuzzer reads the corpus.
pub fn write_seeds(seeds: &[Vec<u8>]) {
    let Some(dir) = std::env::var_os("NEWT_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    fs::create_dir_all(&dir).expect("creating the seed directory");
    for seed in seeds {
        // FNV-1a: a stable name, no dependency.
        let hash = seed.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        let path = dir.join(format!("seed-{hash:016x}"));
        if !path.exists() {
            fs::write(&path, seed).expect("writing a seed");
        }
    }
}

/// Splits `data` at NUL bytes into at most `n` sections (the last one keeps any NULs,
/// so it can hold binary data); missing sections are empty.
pub fn sections(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    out.resize(n, &[]);
    out
}

/// Gives every header of a tar stream a valid checksum (and the first one the `ustar`
/// magic that format detection looks for), walking from header to header by the size
/// each declares, so that mutated archives get past the checksum to the unpacker.
pub fn fix_tar(data: &mut [u8]) {
    if data.len() >= 265 && &data[257..262] != b"ustar" {
        data[257..265].copy_from_slice(b"ustar\x0000");
    }
    let mut at = 0usize;
    while at + 512 <= data.len() {
        let header = &mut data[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{:06o}\0 ", sum & 0o777777).as_bytes());
        let Some(size) = tar_size(&header[124..136]) else {
            break;
        };
        let Some(next) = size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .and_then(|s| s.checked_add(512))
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| at.checked_add(s))
        else {
            break;
        };
        at = next;
    }
}

/// A tar size field: octal text, or base-256 when the high bit of its first byte is set.
fn tar_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut n = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Gzips `data` (fast).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Where each run's scratch directory goes: tmpfs when there is one.
fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Unpacks `bundle` with the default limits into `ROOT/a`, a fresh scratch directory,
/// and checks what `unpack` promises: nothing beside `a` in `ROOT` (no write outside
/// the destination), an empty `a` after a refusal, and after success only directories,
/// regular files and symlinks, no special bits, no group or world write, every symlink
/// resolving inside `a`, and the files and byte count it reports.
pub fn unpack_and_check(bundle: &[u8]) {
    let root = tempfile::Builder::new()
        .prefix("newt-fuzz-")
        .tempdir_in(scratch_base())
        .expect("a scratch directory");
    let dest = root.path().join("a");
    fs::create_dir(&dest).expect("creating the destination");
    let limits = BundleLimits::default();
    let result = newt_runtime::unpack(bundle, &dest, &limits);

    let beside: Vec<OsString> = fs::read_dir(root.path())
        .expect("listing the scratch directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(
        beside,
        vec![OsString::from("a")],
        "unpack wrote outside its destination"
    );
    let meta = fs::symlink_metadata(&dest).expect("the destination");
    assert!(meta.is_dir(), "the destination is no longer a directory");

    match result {
        Err(error) => {
            let left: Vec<_> = fs::read_dir(&dest)
                .expect("listing the destination")
                .map(|e| e.expect("an entry").file_name())
                .collect();
            assert!(
                left.is_empty(),
                "a refused bundle ({error}) left {left:?} in the destination"
            );
        }
        Ok(unpacked) => check_tree(&dest, &unpacked, &limits),
    }
}

fn check_tree(dest: &Path, unpacked: &Unpacked, limits: &BundleLimits) {
    let mut files = Vec::new();
    let mut inodes = HashSet::new();
    let mut bytes = 0u64;
    let mut entries = 0usize;
    let mut todo = vec![PathBuf::new()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(dest.join(&dir)).expect("listing a directory") {
            let entry = entry.expect("an entry");
            let rel = dir.join(entry.file_name());
            let meta = fs::symlink_metadata(dest.join(&rel)).expect("an entry's metadata");
            let mode = meta.permissions().mode();
            entries += 1;
            let kind = meta.file_type();
            if kind.is_symlink() {
                assert!(
                    !link_escapes(dest, &rel),
                    "symlink {rel:?} -> {:?} resolves outside the bundle",
                    fs::read_link(dest.join(&rel))
                );
                continue;
            }
            assert_eq!(mode & 0o7000, 0, "{rel:?} has mode {mode:o}");
            assert_eq!(mode & 0o022, 0, "{rel:?} has mode {mode:o}");
            if kind.is_dir() {
                todo.push(rel);
            } else if kind.is_file() {
                if inodes.insert(meta.ino()) {
                    bytes += meta.len();
                }
                files.push(rel);
            } else {
                panic!("{rel:?} is a special file ({kind:?})");
            }
        }
    }
    files.sort();
    assert_eq!(
        files, unpacked.files,
        "the files reported are not those on disk"
    );
    assert!(
        bytes <= unpacked.total_bytes,
        "{bytes} bytes on disk, {} reported",
        unpacked.total_bytes
    );
    assert!(unpacked.total_bytes <= limits.max_total_bytes);
    assert!(entries <= limits.max_entries, "{entries} entries on disk");
}

/// Whether the symlink at `rel` (inside `root`) leads outside `root` when resolved the
/// way the kernel does: components one by one, following links (a `..` after a link
/// climbs from where it points). A missing component is taken as a directory, which is
/// stricter than the kernel (it would fail there); a regular file met mid-path stops the
/// walk (the kernel fails with ENOTDIR); a loop counts as not escaping (ELOOP).
fn link_escapes(root: &Path, rel: &Path) -> bool {
    let mut stack: Vec<OsString> = rel
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let target = fs::read_link(root.join(rel)).expect("reading a symlink");
    if target.is_absolute() {
        return true;
    }
    push_front(&mut todo, &target);
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            if stack.pop().is_none() {
                return true;
            }
            continue;
        }
        let here: PathBuf = stack.iter().collect::<PathBuf>().join(&part);
        match fs::symlink_metadata(root.join(&here)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return false;
                }
                let target = fs::read_link(root.join(&here)).expect("reading a symlink");
                if target.is_absolute() {
                    return true;
                }
                push_front(&mut todo, &target);
            }
            Ok(meta) if meta.is_file() && !todo.is_empty() => return false,
            _ => stack.push(part),
        }
    }
    false
}

/// Puts `path`'s components (`.` dropped) at the front of `todo`, in order.
fn push_front(todo: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::CurDir => None,
            Component::ParentDir => Some(OsString::from("..")),
            other => Some(other.as_os_str().to_owned()),
        })
        .collect();
    for part in parts.into_iter().rev() {
        todo.push_front(part);
    }
}

/// newt's whole HTTP app in-process, on a temporary home, Docker pointed at a socket
/// that does not exist; built once per fuzzing process.
pub struct App {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _home: tempfile::TempDir,
}

static APP: LazyLock<App> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let home = tempfile::Builder::new()
        .prefix("newt-fuzz-home-")
        .tempdir()
        .expect("a home");
    // The defaults of `newt serve`, without a token; bodies limited as the API tests
    // limit them.
    let config = newt_host::service::ServerConfig {
        max_bundle_bytes: 16 << 20,
        max_input_bytes: 1 << 20,
        token: None,
        ..newt_host::service::ServerConfig::default()
    };
    let (service, _docker) = runtime
        .block_on(newt_host::build_service(
            home.path(),
            newt_host::ServiceOptions {
                config,
                pooling: false,
                docker_host: Some("unix:///nonexistent/newt-fuzz/docker.sock".into()),
            },
        ))
        .expect("building the service");
    App {
        runtime,
        router: newt_host::app(service),
        _home: home,
    }
});

impl App {
    /// The shared app.
    pub fn get() -> &'static App {
        &APP
    }

    /// Sends `request` through the app; its status and whole body.
    pub fn send(&self, request: Request<Body>) -> (StatusCode, bytes::Bytes) {
        self.runtime.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router never fails");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("reading the answer");
            (status, body)
        })
    }

    /// Sends `request` and panics on a 500: a hostile body may be refused, never
    /// crash the handler or leave it in an internal error.
    pub fn send_no_500(&self, request: Request<Body>) -> StatusCode {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body) = self.send(request);
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        status
    }
}

/// `text` percent-encoded for one path segment (everything but unreserved bytes).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
