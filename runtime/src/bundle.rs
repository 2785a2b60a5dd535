//! Safe unpacking of uploaded bundles for container runtimes.
//!
//! A container function's bundle is an archive (`.tar.gz`/`.tgz`, `.tar` or `.zip`)
//! holding a `main.py`, an optional `requirements.txt`, an optional `wheels/` folder and
//! any other files. Whoever can call the deploy API chooses its bytes, so every archive
//! is treated as hostile. [`unpack`] writes one into an empty directory and refuses,
//! with [`Error::InvalidBundle`] naming the entry and what is wrong with it, anything
//! that could reach outside that directory or exhaust the host:
//!
//! - **Path traversal** ("zip slip"): absolute names, `..` components, drive letters
//!   and backslashes, NUL and other control characters, over-long names.
//! - **Links out of the bundle**: a symlink's target must stay inside, checked by its
//!   spelling when the entry is read and once more at the end against the whole
//!   unpacked tree, the way the kernel resolves it (a `..` after a link climbs from
//!   where the link *points*, not from where it sits, so `d/s -> ..` plus
//!   `d/l -> s/../x` escapes although `d/s/../x` spells `d/x`). A hard link may only
//!   name a regular file unpacked before it.
//! - **Writing through links**: no entry is ever written through a symlink. Every
//!   parent of an entry must be a directory this unpacking created (checked in memory
//!   and with `symlink_metadata` on disk), files are created with `O_CREAT|O_EXCL`
//!   (which never follows a link), and a later entry may replace a regular file (tar
//!   semantics) but never a directory or a link.
//! - **Special files**: character and block devices, FIFOs, sockets, sparse files and
//!   any other entry type are refused by name.
//! - **Bombs**: the number of entries (implied parent directories included), the size
//!   of each file and the total are enforced on the bytes actually written, read
//!   through a bounded reader, since the sizes an archive declares can lie. A tar
//!   stream may not decompress to much more than the files it holds (headers and
//!   padding included), and tar extension headers (long names, pax records) are read
//!   into memory only up to 64 KiB.
//! - **Privileges**: files get mode 0644, or 0755 if the archive gave them any execute
//!   bit; directories get 0755. Setuid, setgid and sticky bits, owners, extended
//!   attributes and timestamps are dropped.
//!
//! On any error the destination is emptied again, so a refused bundle leaves nothing
//! behind.
//!
//! # The wrapping directory
//! Both layouts people make are accepted: files at the archive's root (`zip -r fn.zip
//! .`), or everything inside one folder (`tar czf myfn.tgz myfn/`). When there is no
//! `main.py` at the root and every entry sits under one top-level directory that holds
//! a `main.py`, that directory is removed from every path, so `myfn/main.py` unpacks to
//! `main.py`. Otherwise paths are kept as they are.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use crate::error::{Error, Result};

/// What a refusal of an unknown format lists as accepted.
const ACCEPTED_FORMATS: &str = "a .tar.gz (.tgz), .tar or .zip archive";

/// Longest entry name or symlink target, in bytes (Linux's `PATH_MAX` is 4096).
const MAX_NAME_BYTES: usize = 4096;

/// Longest single path component, in bytes (Linux's `NAME_MAX`).
const MAX_COMPONENT_BYTES: usize = 255;

/// Largest tar extension header (GNU long name or link, pax records) read into memory.
/// Real ones hold a path or a few attributes; without a cap, one header could ask us to
/// buffer gigabytes of decompressed zeros.
const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// Headers and padding a tar stream may carry per entry beyond the files' bytes: a
/// 512-byte header, up to 511 bytes of padding and room for a long name or pax header.
const TAR_OVERHEAD_PER_ENTRY: u64 = 8 * 1024;

/// Fixed allowance on top of [`TAR_OVERHEAD_PER_ENTRY`] (end-of-archive blocks, a pax
/// global header such as `git archive` writes).
const TAR_OVERHEAD_FIXED: u64 = 1024 * 1024;

/// Most path components followed while resolving one symlink through the unpacked tree.
/// Real links resolve in a handful; the cap bounds the work a tree of links chained to
/// long targets can cost (the kernel stops after 40 links for the same reason).
const MAX_RESOLVE_STEPS: usize = 256;

/// Bytes copied per read while writing a file.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Limits on what an archive may unpack to.
///
/// The defaults fit any reasonable Python function with vendored wheels while keeping
/// one upload from filling the disk or the inode table.
#[derive(Clone, Debug)]
pub struct BundleLimits {
    /// Most files, directories and links the bundle may create, counting each archive
    /// entry and each parent directory an entry implies without listing it. Default
    /// 10 000: a large dependency tree, far below what would strain a filesystem.
    pub max_entries: usize,
    /// Most bytes all files may hold together, uncompressed. Default 256 MiB: larger
    /// than any function's code plus wheels should be, small enough for many deploys
    /// to unpack at once.
    pub max_total_bytes: u64,
    /// Most bytes one file may hold, uncompressed. Default 256 MiB (the total): one
    /// large wheel or model file is fine.
    pub max_file_bytes: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_entries: 10_000,
            max_total_bytes: 256 * 1024 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The archive formats a container bundle may come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A gzip-compressed tar archive (`.tar.gz`, `.tgz`).
    TarGz,
    /// An uncompressed tar archive (`.tar`).
    Tar,
    /// A zip archive (`.zip`) of stored or deflated entries.
    Zip,
}

impl ArchiveKind {
    /// Recognises an archive by its magic bytes, not its file name: gzip starts with
    /// `1f 8b`, zip with `PK\x03\x04` (or `PK\x05\x06` when empty), and a POSIX or GNU
    /// tar header has `ustar` at offset 257. `None` for anything else.
    pub fn detect(bytes: &[u8]) -> Option<ArchiveKind> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(ArchiveKind::TarGz)
        } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Some(ArchiveKind::Zip)
        } else if has_tar_magic(bytes) {
            Some(ArchiveKind::Tar)
        } else {
            None
        }
    }
}

fn has_tar_magic(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar".as_slice())
}

/// What was unpacked.
#[derive(Clone, Debug, PartialEq)]
pub struct Unpacked {
    /// Relative paths of the regular files written (hard links included, symlinks and
    /// directories not), sorted, after any wrapping directory was removed.
    pub files: Vec<PathBuf>,
    /// Bytes written to files, in total (a file that a later entry of the same name
    /// replaced still counts: the limit is on the work an archive causes).
    pub total_bytes: u64,
    /// A `requirements.txt` is at the root (a regular file, or a symlink to one inside
    /// the bundle).
    pub has_requirements: bool,
    /// A `wheels/` directory at the root holds at least one `.whl` file.
    pub has_wheels: bool,
}

/// Unpacks `bytes` into `dest` (an existing, empty directory), refusing anything unsafe.
///
/// The format is detected from the bytes ([`ArchiveKind::detect`]). Every refusal is an
/// [`Error::InvalidBundle`] whose message names the offending entry and says what is
/// wrong; local I/O failures (and a `dest` that is not an empty directory) are
/// [`Error::Io`]. On any error, everything written so far is removed and `dest` is left
/// empty.
///
/// Refused: names that are absolute, hold `..`, a backslash, a drive letter or a
/// control character; symlinks whose target leaves the bundle (judged by spelling and
/// again through the other links once everything is unpacked); hard links to anything
/// but a regular file unpacked earlier; devices, FIFOs, sockets, sparse files; an entry
/// that would be written through a symlink or replace a directory or symlink; more than
/// [`BundleLimits`] allows, counted on the bytes actually written. Files get mode 0644
/// (0755 if any execute bit was set), directories 0755.
///
/// If there is no `main.py` at the root and every entry sits under one top-level
/// directory holding a `main.py` (what `tar czf myfn.tgz myfn/` makes), that directory
/// is removed from every path: `myfn/main.py` unpacks to `main.py`.
pub fn unpack(bytes: &[u8], dest: &Path, limits: &BundleLimits) -> Result<Unpacked> {
    ensure_empty_dir(dest)?;
    let result = write_bundle(bytes, dest, limits);
    if let Err(error) = &result
        && let Err(cleanup) = empty_dir(dest)
    {
        tracing::warn!(
            dest = %dest.display(),
            %error,
            cleanup_error = %cleanup,
            "could not remove the files of a refused bundle"
        );
    }
    result
}

/// [`unpack`] without the cleanup on error (tests use it to see what a refused archive
/// managed to write).
fn write_bundle(bytes: &[u8], dest: &Path, limits: &BundleLimits) -> Result<Unpacked> {
    let kind = ArchiveKind::detect(bytes).ok_or_else(|| {
        Error::InvalidBundle(format!(
            "not a recognised archive: a bundle for a container runtime must be \
             {ACCEPTED_FORMATS}"
        ))
    })?;
    let over_budget = Cell::new(false);
    let mut unpacker = Unpacker::new(dest, limits, &over_budget);
    match kind {
        ArchiveKind::Tar => read_tar(unpacker.budget(bytes), &mut unpacker)?,
        ArchiveKind::TarGz => {
            let mut gzip = MultiGzDecoder::new(bytes);
            // Look at the first block before handing the stream to tar, so a gzip of
            // something else gets a clear answer rather than a checksum error.
            let mut head = Vec::with_capacity(512);
            (&mut gzip)
                .take(512)
                .read_to_end(&mut head)
                .map_err(|e| Error::InvalidBundle(format!("corrupt gzip stream: {e}")))?;
            if !has_tar_magic(&head) {
                return Err(Error::InvalidBundle(format!(
                    "the gzip stream does not hold a tar archive: a bundle for a container \
                     runtime must be {ACCEPTED_FORMATS}"
                )));
            }
            read_tar(
                unpacker.budget(Cursor::new(head).chain(gzip)),
                &mut unpacker,
            )?
        }
        ArchiveKind::Zip => read_zip(bytes, &mut unpacker)?,
    }
    unpacker.finish()
}

/// The caller's destination must be an empty directory: a refusal empties it again.
fn ensure_empty_dir(dest: &Path) -> Result<()> {
    let mut listing = fs::read_dir(dest).map_err(|e| Error::io("reading", dest, e))?;
    if listing.next().is_some() {
        return Err(Error::io(
            "unpacking into",
            dest,
            io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "a bundle must be unpacked into an empty directory",
            ),
        ));
    }
    Ok(())
}

/// Removes everything inside `dir`, never following a symlink (`remove_dir_all` does
/// not, and a link is removed as the file it is).
fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A refusal naming `entry` as the archive spelled it.
fn refuse(entry: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidBundle(format!("entry {}: {why}", shown(entry)))
}

/// An entry name quoted for a message: escaped (no raw control characters reach a log
/// or a terminal) and cut short (a hostile name can be kilobytes long).
fn shown(name: &str) -> String {
    const MAX_SHOWN_CHARS: usize = 200;
    if name.chars().count() <= MAX_SHOWN_CHARS {
        format!("{name:?}")
    } else {
        let cut: String = name.chars().take(MAX_SHOWN_CHARS).collect();
        format!("{cut:?}…")
    }
}

/// Checks the characters of an entry name or symlink target.
fn check_spelling(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {c:?}"));
    }
    if name.contains('\\') {
        return Err("contains a backslash (a Windows path?): use `/` between folders".into());
    }
    if name.starts_with('/') {
        return Err("is an absolute path: entries must be relative to the bundle".into());
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("starts with a drive letter (an absolute Windows path)".into());
    }
    Ok(())
}

/// Turns an archive entry name into a relative path, `None` for the bundle root itself
/// (`.`, `./`). `./a` and `a//b` are normalised; `..` is refused outright, even where it
/// would stay inside: no real bundle needs it.
fn entry_path(name: &str) -> Result<Option<PathBuf>, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    check_spelling(name).map_err(|why| format!("name {why}"))?;
    let mut path = PathBuf::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("`..` in the path: entries must stay inside the bundle".into()),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "a path component is longer than {MAX_COMPONENT_BYTES} bytes"
                ));
            }
            c => path.push(c),
        }
    }
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

/// Checks a symlink target by its spelling: relative, and resolved from the link's
/// directory as written it stays inside. [`resolve`] checks it again through the
/// unpacked tree once every entry is known.
fn check_link_target(link: &Path, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    check_spelling(target).map_err(|why| format!("symlink target {}: {why}", shown(target)))?;
    let mut depth = link.components().count() - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if depth == 0 => {
                return Err(format!(
                    "symlink to {} leaves the bundle: links must point inside it",
                    shown(target)
                ));
            }
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// What one path of the unpacked tree is.
#[derive(Debug)]
enum Node {
    Dir,
    File,
    Symlink {
        /// The target as the archive gave it (relative, checked).
        target: String,
        /// The entry's name in the archive, for messages.
        entry: String,
    },
}

impl Node {
    fn describe(&self) -> &'static str {
        match self {
            Node::Dir => "a directory",
            Node::File => "a regular file",
            Node::Symlink { .. } => "a symlink",
        }
    }
}

/// Resolves `path` through the unpacked tree the way the kernel would, following
/// symlinks wherever they appear, and returns where it ends up. Fails if the walk
/// climbs above the root. A missing component is treated as a directory, so a
/// dangling link is judged by its spelling from there on.
fn resolve(nodes: &BTreeMap<PathBuf, Node>, path: &Path) -> Result<PathBuf, String> {
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = path
        .iter()
        .rev()
        .map(|component| component.to_os_string())
        .collect();
    let mut at = PathBuf::new();
    let mut depth = 0usize;
    let mut steps = 0usize;
    while let Some(component) = pending.pop() {
        steps += 1;
        if steps > MAX_RESOLVE_STEPS {
            return Err("too many levels of symlinks".into());
        }
        if component == "." || component.is_empty() {
            continue;
        }
        if component == ".." {
            if depth == 0 {
                return Err("following the links on its way, it leads outside the bundle".into());
            }
            at.pop();
            depth -= 1;
            continue;
        }
        at.push(&component);
        depth += 1;
        match nodes.get(&at) {
            Some(Node::Symlink { target, .. }) => {
                at.pop();
                depth -= 1;
                pending.extend(target.split('/').rev().map(OsString::from));
            }
            // Looking up anything under a file fails (ENOTDIR): the walk ends here.
            Some(Node::File) if !pending.is_empty() => return Ok(at),
            _ => {}
        }
    }
    Ok(at)
}

/// Writes entries into the destination and remembers what it wrote.
struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a BundleLimits,
    /// Set by the [`Budget`] reader under a tar stream when it ran out.
    over_budget: &'a Cell<bool>,
    /// Every path created, relative to `dest`. The source of truth for "what is
    /// there": nothing but this unpacking writes into `dest`.
    nodes: BTreeMap<PathBuf, Node>,
    /// Entries counted against [`BundleLimits::max_entries`].
    entries: usize,
    /// Bytes written to files so far.
    total_bytes: u64,
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, limits: &'a BundleLimits, over_budget: &'a Cell<bool>) -> Self {
        Unpacker {
            dest,
            limits,
            over_budget,
            nodes: BTreeMap::new(),
            entries: 0,
            total_bytes: 0,
        }
    }

    /// The most a tar stream may decompress to: the files' bytes plus headers and
    /// padding for as many entries as allowed.
    fn stream_budget(&self) -> u64 {
        let entries = u64::try_from(self.limits.max_entries).unwrap_or(u64::MAX);
        self.limits
            .max_total_bytes
            .saturating_add(
                entries
                    .saturating_add(1)
                    .saturating_mul(TAR_OVERHEAD_PER_ENTRY),
            )
            .saturating_add(TAR_OVERHEAD_FIXED)
    }

    /// Wraps a tar stream in a reader that stops at [`Self::stream_budget`].
    fn budget<R: Read>(&self, inner: R) -> Budget<'a, R> {
        Budget {
            inner,
            left: self.stream_budget(),
            tripped: self.over_budget,
        }
    }

    /// The refusal for a tar stream that ran over its budget.
    fn over_budget_error(&self, place: &str) -> Error {
        Error::InvalidBundle(format!(
            "{place}: the archive decompresses to more than {} bytes, more than its files \
             may hold ({} bytes) plus headers",
            self.stream_budget(),
            self.limits.max_total_bytes
        ))
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.dest.join(path)
    }

    /// Counts one entry (an archive member or an implied directory) against the limit,
    /// before anything is created for it.
    fn count(&mut self, entry: &str) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(refuse(
                entry,
                format!(
                    "the bundle has more than {} entries (files, directories and links)",
                    self.limits.max_entries
                ),
            ));
        }
        Ok(())
    }

    /// Makes sure every parent of `path` is a real directory created by this
    /// unpacking, creating the missing ones. An entry under a file or a symlink is
    /// refused: writing it would go through the link.
    fn make_parents(&mut self, entry: &str, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.iter() {
            prefix.push(component);
            match self.nodes.get(&prefix) {
                Some(Node::Dir) => {
                    // The map says directory; make sure the disk agrees, so a bug here
                    // can never turn into a write through a link.
                    let full = self.full(&prefix);
                    let metadata = fs::symlink_metadata(&full)
                        .map_err(|e| Error::io("inspecting", &full, e))?;
                    if !metadata.is_dir() {
                        return Err(refuse(
                            entry,
                            format!("{} is not a directory on disk", shown_path(&prefix)),
                        ));
                    }
                }
                Some(Node::File) => {
                    return Err(refuse(
                        entry,
                        format!("its parent {} is a regular file", shown_path(&prefix)),
                    ));
                }
                Some(Node::Symlink { .. }) => {
                    return Err(refuse(
                        entry,
                        format!(
                            "it would be written through the symlink {}",
                            shown_path(&prefix)
                        ),
                    ));
                }
                None => {
                    self.count(entry)?;
                    self.create_dir(&prefix)?;
                }
            }
        }
        Ok(())
    }

    fn create_dir(&mut self, path: &Path) -> Result<()> {
        let full = self.full(path);
        // `create` fails if anything, a symlink included, is already there.
        DirBuilder::new()
            .mode(0o755)
            .create(&full)
            .map_err(|e| Error::io("creating", &full, e))?;
        // The umask may have taken bits off; directories are always 0755.
        fs::set_permissions(&full, Permissions::from_mode(0o755))
            .map_err(|e| Error::io("setting permissions of", &full, e))?;
        self.nodes.insert(path.to_path_buf(), Node::Dir);
        Ok(())
    }

    /// Clears the way for a regular file at `path`: an earlier regular file there is
    /// removed (a later tar entry wins), anything else refuses the entry.
    fn replace_file(&mut self, entry: &str, path: &Path) -> Result<()> {
        match self.nodes.get(path) {
            None => Ok(()),
            Some(Node::File) => {
                let full = self.full(path);
                let metadata =
                    fs::symlink_metadata(&full).map_err(|e| Error::io("inspecting", &full, e))?;
                if !metadata.is_file() {
                    return Err(refuse(
                        entry,
                        "the file it replaces is not a regular file on disk",
                    ));
                }
                fs::remove_file(&full).map_err(|e| Error::io("removing", &full, e))?;
                self.nodes.remove(path);
                Ok(())
            }
            Some(other) => Err(refuse(
                entry,
                format!("a file would replace {} of the same name", other.describe()),
            )),
        }
    }

    fn add_dir(&mut self, entry: &str) -> Result<()> {
        self.count(entry)?;
        let Some(path) = entry_path(entry).map_err(|why| refuse(entry, why))? else {
            // `./`: the bundle root, which exists already.
            return Ok(());
        };
        self.make_parents(entry, &path)?;
        match self.nodes.get(&path) {
            None => self.create_dir(&path),
            Some(Node::Dir) => Ok(()),
            Some(other) => Err(refuse(
                entry,
                format!(
                    "a directory would replace {} of the same name",
                    other.describe()
                ),
            )),
        }
    }

    /// Writes a regular file from `data`, which claims to hold `declared` bytes.
    fn add_file(
        &mut self,
        entry: &str,
        executable: bool,
        declared: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        self.count(entry)?;
        let path = entry_path(entry)
            .map_err(|why| refuse(entry, why))?
            .ok_or_else(|| refuse(entry, "a file with an empty name"))?;
        let max_file = self.limits.max_file_bytes;
        let max_total = self.limits.max_total_bytes;
        // Refuse on the declared size before writing anything; the bytes actually read
        // are checked again below, since the declaration can lie.
        if declared > max_file {
            return Err(refuse(
                entry,
                format!("it is {declared} bytes, over the limit of {max_file} bytes for one file"),
            ));
        }
        if declared > max_total - self.total_bytes {
            return Err(refuse(
                entry,
                format!("it would bring the bundle over its limit of {max_total} bytes unpacked"),
            ));
        }
        self.make_parents(entry, &path)?;
        self.replace_file(entry, &path)?;

        let full = self.full(&path);
        // `create_new` is O_CREAT|O_EXCL: it fails on anything already there and never
        // follows a symlink.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&full)
            .map_err(|e| Error::io("creating", &full, e))?;
        self.nodes.insert(path, Node::File);

        let cap = max_file.min(max_total - self.total_bytes);
        let mut limited = data.take(cap.saturating_add(1));
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut written = 0u64;
        loop {
            let read = match limited.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.over_budget.get() => {
                    return Err(self.over_budget_error(&format!("entry {}", shown(entry))));
                }
                Err(e) => return Err(refuse(entry, format!("cannot read its data: {e}"))),
            };
            // Never write past a limit: refuse before the write that would cross it.
            let after = written + read as u64;
            if after > cap {
                return Err(if after > max_file {
                    refuse(
                        entry,
                        format!("it holds more than {max_file} bytes, the limit for one file"),
                    )
                } else {
                    refuse(
                        entry,
                        format!(
                            "it brings the bundle over its limit of {max_total} bytes unpacked"
                        ),
                    )
                });
            }
            file.write_all(&buffer[..read])
                .map_err(|e| Error::io("writing", &full, e))?;
            written = after;
        }
        if written != declared {
            return Err(refuse(
                entry,
                format!("it holds {written} bytes but its header declares {declared}"),
            ));
        }
        self.total_bytes += written;
        let mode = if executable { 0o755 } else { 0o644 };
        // Through the open handle (fchmod), not the path.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| Error::io("setting permissions of", &full, e))?;
        Ok(())
    }

    fn add_symlink(&mut self, entry: &str, target: &str) -> Result<()> {
        self.count(entry)?;
        let path = entry_path(entry)
            .map_err(|why| refuse(entry, why))?
            .ok_or_else(|| refuse(entry, "a symlink with an empty name"))?;
        check_link_target(&path, target).map_err(|why| refuse(entry, why))?;
        self.make_parents(entry, &path)?;
        if let Some(existing) = self.nodes.get(&path) {
            return Err(refuse(
                entry,
                format!(
                    "a symlink would replace {} of the same name",
                    existing.describe()
                ),
            ));
        }
        let full = self.full(&path);
        // symlink(2) fails if anything is already there; it never follows one.
        std::os::unix::fs::symlink(target, &full).map_err(|e| Error::io("creating", &full, e))?;
        self.nodes.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
                entry: entry.to_owned(),
            },
        );
        Ok(())
    }

    /// A tar hard link: `target` is another entry's name, relative to the archive root.
    fn add_hardlink(&mut self, entry: &str, target: &str) -> Result<()> {
        self.count(entry)?;
        let path = entry_path(entry)
            .map_err(|why| refuse(entry, why))?
            .ok_or_else(|| refuse(entry, "a hard link with an empty name"))?;
        let target_path = entry_path(target)
            .map_err(|why| refuse(entry, format!("hard link to {}: {why}", shown(target))))?
            .ok_or_else(|| refuse(entry, "a hard link to the bundle root"))?;
        if !matches!(self.nodes.get(&target_path), Some(Node::File)) {
            return Err(refuse(
                entry,
                format!(
                    "hard link to {}, which is not a regular file unpacked before it",
                    shown(target)
                ),
            ));
        }
        if target_path == path {
            return Err(refuse(entry, "a hard link to itself"));
        }
        self.make_parents(entry, &path)?;
        self.replace_file(entry, &path)?;
        let (full_target, full) = (self.full(&target_path), self.full(&path));
        let metadata = fs::symlink_metadata(&full_target)
            .map_err(|e| Error::io("inspecting", &full_target, e))?;
        if !metadata.is_file() {
            return Err(refuse(
                entry,
                format!(
                    "hard link to {}, which is not a regular file on disk",
                    shown(target)
                ),
            ));
        }
        // link(2) without AT_SYMLINK_FOLLOW: links the file itself, never a link's target.
        fs::hard_link(&full_target, &full).map_err(|e| Error::io("linking", &full, e))?;
        self.nodes.insert(path, Node::File);
        Ok(())
    }

    /// Removes a wrapping directory if there is one, checks every symlink against the
    /// final tree and reports what was unpacked.
    fn finish(mut self) -> Result<Unpacked> {
        self.unwrap_single_dir()?;
        for (path, node) in &self.nodes {
            if let Node::Symlink { target, entry } = node {
                resolve(&self.nodes, path)
                    .map_err(|why| refuse(entry, format!("symlink to {}: {why}", shown(target))))?;
            }
        }
        let files: Vec<PathBuf> = self
            .nodes
            .iter()
            .filter(|(_, node)| matches!(node, Node::File))
            .map(|(path, _)| path.clone())
            .collect();
        let requirements = Path::new("requirements.txt");
        let has_requirements = self.nodes.contains_key(requirements)
            && resolve(&self.nodes, requirements)
                .is_ok_and(|at| matches!(self.nodes.get(&at), Some(Node::File)));
        let has_wheels = matches!(self.nodes.get(Path::new("wheels")), Some(Node::Dir))
            && files.iter().any(|file| {
                file.parent() == Some(Path::new("wheels"))
                    && file.extension().is_some_and(|ext| ext == "whl")
            });
        Ok(Unpacked {
            files,
            total_bytes: self.total_bytes,
            has_requirements,
            has_wheels,
        })
    }

    /// If there is no `main.py` at the root and everything sits in one top-level
    /// directory that has one, moves that directory's contents up to the root.
    fn unwrap_single_dir(&mut self) -> Result<()> {
        if self.nodes.contains_key(Path::new("main.py")) {
            return Ok(());
        }
        let mut roots = self
            .nodes
            .iter()
            .filter(|(path, _)| path.components().count() == 1);
        let (Some((top, Node::Dir)), None) = (roots.next(), roots.next()) else {
            return Ok(());
        };
        if !matches!(
            self.nodes.get(&top.join("main.py")),
            Some(Node::File | Node::Symlink { .. })
        ) {
            return Ok(());
        }
        let top = top.clone();
        let children: Vec<OsString> = self
            .nodes
            .keys()
            .filter(|path| path.parent() == Some(top.as_path()))
            .filter_map(|path| path.file_name().map(OsString::from))
            .collect();
        // Rename the wrapper out of the way first: it may hold an entry of its own name
        // (`myfn/myfn/`). The temporary name must clash with neither.
        let mut parked = OsString::from(".newt-unwrap");
        let mut attempt = 0;
        while parked == top.as_os_str() || children.contains(&parked) {
            attempt += 1;
            parked = OsString::from(format!(".newt-unwrap-{attempt}"));
        }
        let parked = self.full(Path::new(&parked));
        let wrapper = self.full(&top);
        fs::rename(&wrapper, &parked).map_err(|e| Error::io("renaming", &wrapper, e))?;
        for child in &children {
            let from = parked.join(child);
            // rename(2) moves a symlink itself, never what it points to.
            fs::rename(&from, self.dest.join(child))
                .map_err(|e| Error::io("renaming", &from, e))?;
        }
        fs::remove_dir(&parked).map_err(|e| Error::io("removing", &parked, e))?;
        self.nodes = std::mem::take(&mut self.nodes)
            .into_iter()
            .filter_map(|(path, node)| {
                let inner = path.strip_prefix(&top).ok()?;
                (!inner.as_os_str().is_empty()).then(|| (inner.to_path_buf(), node))
            })
            .collect();
        Ok(())
    }
}

fn shown_path(path: &Path) -> String {
    shown(&path.to_string_lossy())
}

/// A reader that fails once `left` bytes have been read, recording that it did.
struct Budget<'a, R> {
    inner: R,
    left: u64,
    tripped: &'a Cell<bool>,
}

impl<R: Read> Read for Budget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // Exactly at the budget is fine if the stream ends here.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.tripped.set(true);
                    Err(io::Error::other("the archive stream is over its budget"))
                }
            };
        }
        let room = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let read = self.inner.read(&mut buf[..room])?;
        self.left -= read as u64;
        Ok(read)
    }
}

/// Names and sizes carried by tar extension headers for the entry that follows them.
#[derive(Default)]
struct TarExtensions {
    gnu_long_name: Option<Vec<u8>>,
    gnu_long_link: Option<Vec<u8>>,
    pax: bool,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

impl TarExtensions {
    fn is_empty(&self) -> bool {
        self.gnu_long_name.is_none() && self.gnu_long_link.is_none() && !self.pax
    }

    /// Reads one extension header (`L`, `K`, `x` or `g`) into `self`.
    fn read(&mut self, kind: EntryType, data: &mut dyn Read, size: u64, place: &str) -> Result<()> {
        let bad = |why: String| Error::InvalidBundle(format!("{place}: {why}"));
        if size > MAX_EXTENSION_BYTES {
            return Err(bad(format!(
                "a tar extension header of {size} bytes (at most {MAX_EXTENSION_BYTES})"
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        data.take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read a tar extension header: {e}")))?;
        match kind {
            EntryType::GNULongName | EntryType::GNULongLink => {
                while bytes.last() == Some(&0) {
                    bytes.pop();
                }
                let slot = if kind == EntryType::GNULongName {
                    &mut self.gnu_long_name
                } else {
                    &mut self.gnu_long_link
                };
                if slot.replace(bytes).is_some() {
                    return Err(bad("two GNU long names for one entry".into()));
                }
            }
            EntryType::XHeader => {
                if std::mem::replace(&mut self.pax, true) {
                    return Err(bad("two pax headers for one entry".into()));
                }
                for record in tar::PaxExtensions::new(&bytes) {
                    let record = record.map_err(|e| bad(format!("malformed pax header: {e}")))?;
                    match record.key_bytes() {
                        b"path" => self.pax_path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => self.pax_link = Some(record.value_bytes().to_vec()),
                        b"size" => {
                            let size = record
                                .value()
                                .ok()
                                .and_then(|value| value.parse::<u64>().ok())
                                .ok_or_else(|| bad("malformed pax size record".into()))?;
                            self.pax_size = Some(size);
                        }
                        // mtime, uid, xattrs, comments...: nothing we apply.
                        _ => {}
                    }
                }
            }
            _ => {
                // A global pax header (`git archive` writes one with a comment). One that
                // renames or resizes what follows is refused rather than guessed at.
                for record in tar::PaxExtensions::new(&bytes) {
                    let record = record.map_err(|e| bad(format!("malformed pax header: {e}")))?;
                    let key = record.key_bytes();
                    if matches!(key, b"path" | b"linkpath" | b"size") {
                        return Err(bad(format!(
                            "a global pax header sets `{}` for every entry; not supported",
                            String::from_utf8_lossy(key)
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes a tar name as UTF-8 (bundles are code: non-UTF-8 names have no use and
/// cannot be named in a message faithfully).
fn utf8_name(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::InvalidBundle(format!(
            "entry {}: its {what} is not valid UTF-8",
            shown(&String::from_utf8_lossy(bytes))
        ))
    })
}

/// Reads a tar stream entry by entry. The `tar` crate's raw mode is used so that GNU
/// long names and pax headers are handled here, with a size cap, rather than read into
/// memory whole.
fn read_tar<R: Read>(stream: Budget<'_, R>, out: &mut Unpacker<'_>) -> Result<()> {
    let mut archive = tar::Archive::new(stream);
    let mut last: Option<String> = None;
    let place = |last: &Option<String>| match last {
        Some(name) => format!("after entry {}", shown(name)),
        None => "at the start of the archive".into(),
    };
    let stream_error = |out: &Unpacker<'_>, last: &Option<String>, e: io::Error| {
        if out.over_budget.get() {
            out.over_budget_error(&place(last))
        } else {
            Error::InvalidBundle(format!("corrupt tar archive {}: {e}", place(last)))
        }
    };
    let entries = archive
        .entries()
        .map_err(|e| stream_error(out, &last, e))?
        .raw(true);
    let mut extensions = TarExtensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(out, &last, e))?;
        let header = entry.header();
        let kind = header.entry_type();
        let size = header
            .entry_size()
            .map_err(|e| stream_error(out, &last, e))?;
        if matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        ) {
            let place = format!("the extension header {}", place(&last));
            extensions.read(kind, &mut entry, size, &place)?;
            continue;
        }

        let header = entry.header();
        let ext = std::mem::take(&mut extensions);
        let name_bytes = ext
            .pax_path
            .or(ext.gnu_long_name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let name = utf8_name(&name_bytes, "name")?;
        last = Some(name.clone());
        let link_bytes = ext
            .pax_link
            .or(ext.gnu_long_link)
            .or_else(|| header.link_name_bytes().map(|link| link.into_owned()));
        if let Some(pax_size) = ext.pax_size
            && pax_size != size
        {
            // Parsers disagree on which one wins; refuse rather than pick.
            return Err(refuse(
                &name,
                format!("its pax size ({pax_size}) disagrees with its header ({size})"),
            ));
        }
        let mode = header
            .mode()
            .map_err(|e| refuse(&name, format!("corrupt header: {e}")))?;
        let link_target = || -> Result<String> {
            let bytes = link_bytes
                .as_deref()
                .ok_or_else(|| refuse(&name, "a link without a target"))?;
            let target = std::str::from_utf8(bytes)
                .map_err(|_| refuse(&name, "its link target is not valid UTF-8"))?;
            Ok(target.to_owned())
        };
        match kind {
            // Old tars mark directories by a trailing slash on a regular entry.
            EntryType::Regular | EntryType::Continuous if name.ends_with('/') => {
                out.add_dir(&name)?
            }
            EntryType::Regular | EntryType::Continuous => {
                out.add_file(&name, mode & 0o111 != 0, size, &mut entry)?
            }
            EntryType::Directory => out.add_dir(&name)?,
            EntryType::Symlink => {
                let target = link_target()?;
                out.add_symlink(&name, &target)?
            }
            EntryType::Link => {
                let target = link_target()?;
                out.add_hardlink(&name, &target)?
            }
            EntryType::Char => return Err(refuse(&name, special_file("a character device"))),
            EntryType::Block => return Err(refuse(&name, special_file("a block device"))),
            EntryType::Fifo => return Err(refuse(&name, special_file("a FIFO (named pipe)"))),
            EntryType::GNUSparse => return Err(refuse(&name, special_file("a sparse file"))),
            other => {
                return Err(refuse(
                    &name,
                    special_file(&format!(
                        "of tar entry type {:?}",
                        char::from(other.as_byte())
                    )),
                ));
            }
        }
    }
    if !extensions.is_empty() {
        return Err(Error::InvalidBundle(format!(
            "the extension header {} describes no entry: the archive ends after it",
            place(&last)
        )));
    }
    Ok(())
}

fn special_file(what: &str) -> String {
    format!("it is {what}; a bundle may hold only regular files, directories and links")
}

/// What a zip entry is, from its name and Unix mode.
enum ZipKind {
    Dir,
    File { executable: bool },
    Symlink,
}

fn zip_kind(name: &str, mode: Option<u32>) -> Result<ZipKind, String> {
    const S_IFMT: u32 = 0o170000;
    const S_IFSOCK: u32 = 0o140000;
    const S_IFLNK: u32 = 0o120000;
    const S_IFREG: u32 = 0o100000;
    const S_IFBLK: u32 = 0o060000;
    const S_IFDIR: u32 = 0o040000;
    const S_IFCHR: u32 = 0o020000;
    const S_IFIFO: u32 = 0o010000;
    let mode = mode.unwrap_or(0);
    let slash = name.ends_with('/');
    match (mode & S_IFMT, slash) {
        (0 | S_IFDIR, true) | (S_IFDIR, false) => Ok(ZipKind::Dir),
        (0 | S_IFREG, false) => Ok(ZipKind::File {
            executable: mode & 0o111 != 0,
        }),
        (S_IFLNK, false) => Ok(ZipKind::Symlink),
        (S_IFCHR, _) => Err(special_file("a character device")),
        (S_IFBLK, _) => Err(special_file("a block device")),
        (S_IFIFO, _) => Err(special_file("a FIFO (named pipe)")),
        (S_IFSOCK, _) => Err(special_file("a socket")),
        (S_IFREG | S_IFLNK, true) => {
            Err("its name ends with `/` but its mode says it is not a directory".into())
        }
        (other, _) => Err(special_file(&format!("of unknown file type {other:#o}"))),
    }
}

fn read_zip(bytes: &[u8], out: &mut Unpacker<'_>) -> Result<()> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::InvalidBundle(format!("corrupt zip archive: {e}")))?;
    let count = archive.len();
    let name_at = |archive: &zip::ZipArchive<Cursor<&[u8]>>, index: usize| -> Result<String> {
        let name = archive
            .name_for_index(index)
            .ok_or_else(|| Error::InvalidBundle(format!("zip entry #{index} is missing")))?
            .map_err(|e| Error::InvalidBundle(format!("zip entry #{index}: bad name: {e}")))?;
        Ok(name.into_owned())
    };
    // The central directory lists every entry up front: refuse a bundle with too many
    // before writing any.
    if count > out.limits.max_entries {
        return Err(refuse(
            &name_at(&archive, out.limits.max_entries)?,
            format!(
                "the archive has {count} entries, more than the limit of {}",
                out.limits.max_entries
            ),
        ));
    }
    for index in 0..count {
        let name = name_at(&archive, index)?;
        let (mode, size, encrypted) = {
            let data = archive
                .by_index_data(index)
                .map_err(|e| refuse(&name, format!("corrupt zip entry: {e}")))?;
            (data.unix_mode(), data.size(), data.encrypted())
        };
        if encrypted {
            return Err(refuse(&name, "encrypted zip entries are not supported"));
        }
        match zip_kind(&name, mode).map_err(|why| refuse(&name, why))? {
            ZipKind::Dir => out.add_dir(&name)?,
            ZipKind::File { executable } => {
                let mut file = archive
                    .by_index(index)
                    .map_err(|e| refuse(&name, format!("cannot read it: {e}")))?;
                out.add_file(&name, executable, size, &mut file)?;
            }
            ZipKind::Symlink => {
                // A zip symlink's data is its target.
                let cap = MAX_NAME_BYTES as u64;
                if size > cap {
                    return Err(refuse(&name, format!("a symlink target over {cap} bytes")));
                }
                let file = archive
                    .by_index(index)
                    .map_err(|e| refuse(&name, format!("cannot read it: {e}")))?;
                let mut target = Vec::new();
                file.take(cap + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| refuse(&name, format!("cannot read it: {e}")))?;
                if target.len() as u64 > cap {
                    return Err(refuse(&name, format!("a symlink target over {cap} bytes")));
                }
                let target = String::from_utf8(target)
                    .map_err(|_| refuse(&name, "its symlink target is not valid UTF-8"))?;
                out.add_symlink(&name, &target)?;
            }
        }
    }
    Ok(())
}

/// Packs regular files into a `.tar.gz` bundle, the format [`unpack`] reads first:
/// how the built-in bench functions, the benches and the tests make their bundles.
/// Each file gets mode 0644.
pub fn pack(files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    for (path, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, *body)?;
    }
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use tempfile::TempDir;
    use zip::write::SimpleFileOptions;

    // ---- archive builders -------------------------------------------------------

    /// One tar entry, written by hand so that names the `tar` crate refuses to build
    /// (`..`, absolute paths) can be crafted.
    struct Raw {
        name: Vec<u8>,
        kind: u8,
        link: Vec<u8>,
        mode: u32,
        data: Vec<u8>,
    }

    fn file(name: &str, data: &str) -> Raw {
        file_mode(name, 0o644, data)
    }

    fn file_mode(name: &str, mode: u32, data: &str) -> Raw {
        Raw {
            name: name.into(),
            kind: b'0',
            link: vec![],
            mode,
            data: data.into(),
        }
    }

    fn dir(name: &str) -> Raw {
        dir_mode(name, 0o755)
    }

    fn dir_mode(name: &str, mode: u32) -> Raw {
        Raw {
            name: name.into(),
            kind: b'5',
            link: vec![],
            mode,
            data: vec![],
        }
    }

    fn symlink(name: &str, target: &str) -> Raw {
        Raw {
            name: name.into(),
            kind: b'2',
            link: target.into(),
            mode: 0o777,
            data: vec![],
        }
    }

    fn hardlink(name: &str, target: &str) -> Raw {
        Raw {
            name: name.into(),
            kind: b'1',
            link: target.into(),
            mode: 0o644,
            data: vec![],
        }
    }

    fn special(name: &str, kind: u8) -> Raw {
        Raw {
            name: name.into(),
            kind,
            link: vec![],
            mode: 0o644,
            data: vec![],
        }
    }

    fn raw_header(name: &[u8], kind: u8, link: &[u8], mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(EntryType::new(kind));
        header.set_cksum();
        header
    }

    fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }

    /// Pax records (`"<len> key=value\n"`, the length counting itself).
    fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {key}=").as_bytes());
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }

    fn tar_of(entries: &[Raw]) -> Vec<u8> {
        let mut out = tar_entries(entries);
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// Entries without the end-of-archive blocks.
    fn tar_entries(entries: &[Raw]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries {
            let header = raw_header(
                &entry.name,
                entry.kind,
                &entry.link,
                entry.mode,
                entry.data.len() as u64,
            );
            out.extend_from_slice(header.as_bytes());
            push_padded(&mut out, &entry.data);
        }
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    enum Z<'a> {
        File(&'a str, u32, &'a str),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    fn zip_of(entries: &[Z<'_>]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for entry in entries {
            match entry {
                Z::File(name, mode, data) => {
                    writer
                        .start_file(*name, options.unix_permissions(*mode))
                        .unwrap();
                    writer.write_all(data.as_bytes()).unwrap();
                }
                Z::Dir(name) => writer.add_directory(*name, options).unwrap(),
                Z::Symlink(name, target) => writer.add_symlink(*name, *target, options).unwrap(),
            }
        }
        writer.finish().unwrap().into_inner()
    }

    // ---- assertions -------------------------------------------------------------

    /// A temporary directory holding only `dest`, so a test can see whether anything
    /// was written beside it.
    struct Scratch {
        root: TempDir,
        dest: PathBuf,
    }

    fn scratch() -> Scratch {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();
        Scratch { root, dest }
    }

    impl Scratch {
        fn unpack(&self, bytes: &[u8]) -> Result<Unpacked> {
            unpack(bytes, &self.dest, &BundleLimits::default())
        }

        fn unpack_with(&self, bytes: &[u8], limits: &BundleLimits) -> Result<Unpacked> {
            unpack(bytes, &self.dest, limits)
        }

        /// Asserts a refusal whose message has every one of `needles`, and that
        /// nothing exists outside `dest` and `dest` is empty.
        #[track_caller]
        fn refused(&self, result: Result<Unpacked>, needles: &[&str]) -> String {
            let message = match result {
                Err(Error::InvalidBundle(message)) => message,
                other => panic!("expected an invalid-bundle refusal, got {other:?}"),
            };
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "refusal {message:?} should mention {needle:?}"
                );
            }
            self.assert_clean();
            message
        }

        #[track_caller]
        fn assert_clean(&self) {
            let beside: Vec<_> = fs::read_dir(self.root.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            assert_eq!(beside, ["dest"], "something was written outside dest");
            let inside: Vec<_> = fs::read_dir(&self.dest)
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            assert!(
                inside.is_empty(),
                "dest is not empty after a refusal: {inside:?}"
            );
        }

        fn read(&self, path: &str) -> String {
            fs::read_to_string(self.dest.join(path)).unwrap()
        }

        fn mode(&self, path: &str) -> u32 {
            fs::symlink_metadata(self.dest.join(path)).unwrap().mode() & 0o7777
        }
    }

    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(PathBuf::from).collect()
    }

    /// Bytes in regular files under `dir`.
    fn bytes_on_disk(dir: &Path) -> u64 {
        let mut total = 0;
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                total += bytes_on_disk(&entry.path());
            } else if kind.is_file() {
                total += entry.metadata().unwrap().len();
            }
        }
        total
    }

    // ---- formats ----------------------------------------------------------------

    #[test]
    fn detects_formats_by_magic_bytes() {
        let tar = tar_of(&[file("main.py", "")]);
        assert_eq!(ArchiveKind::detect(&tar), Some(ArchiveKind::Tar));
        assert_eq!(ArchiveKind::detect(&gz(&tar)), Some(ArchiveKind::TarGz));
        assert_eq!(
            ArchiveKind::detect(&zip_of(&[Z::File("main.py", 0o644, "")])),
            Some(ArchiveKind::Zip)
        );
        assert_eq!(ArchiveKind::detect(&zip_of(&[])), Some(ArchiveKind::Zip));
        assert_eq!(ArchiveKind::detect(b"\0asm\x01\0\0\0"), None);
        assert_eq!(ArchiveKind::detect(b""), None);
    }

    #[test]
    fn packed_bundles_unpack_to_the_same_files() {
        let bundle = pack(&[
            ("main.py", b"def handler(e):\n    return e\n"),
            ("lib/x.txt", b"x"),
        ])
        .unwrap();
        assert_eq!(ArchiveKind::detect(&bundle), Some(ArchiveKind::TarGz));
        let s = scratch();
        s.unpack(&bundle).unwrap();
        assert_eq!(s.read("main.py"), "def handler(e):\n    return e\n");
        assert_eq!(s.read("lib/x.txt"), "x");
    }

    #[test]
    fn unknown_format_refused_listing_accepted_ones() {
        let s = scratch();
        s.refused(
            s.unpack(b"print('hello')\n"),
            &[
                "not a recognised archive",
                ".tar.gz",
                ".tgz",
                ".tar",
                ".zip",
            ],
        );
        s.refused(
            s.unpack(&gz(b"just some text")),
            &["does not hold a tar archive"],
        );
    }

    #[test]
    fn tar_gz_bundle_unpacks_with_flags() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, data).unwrap();
        };
        add("main.py", b"def handler(event):\n    return event\n");
        add("requirements.txt", b"requests==2.32.3\n");
        add("wheels/tiny-1.0-py3-none-any.whl", b"PK fake wheel");
        add("lib/util.py", b"X = 1\n");
        let bundle = gz(&builder.into_inner().unwrap());

        let s = scratch();
        let unpacked = s.unpack(&bundle).unwrap();
        assert_eq!(
            unpacked,
            Unpacked {
                files: paths(&[
                    "lib/util.py",
                    "main.py",
                    "requirements.txt",
                    "wheels/tiny-1.0-py3-none-any.whl",
                ]),
                total_bytes: 37 + 17 + 13 + 6,
                has_requirements: true,
                has_wheels: true,
            }
        );
        assert_eq!(s.read("requirements.txt"), "requests==2.32.3\n");
        assert_eq!(s.mode("main.py"), 0o644);
        assert_eq!(s.mode("wheels"), 0o755);
    }

    #[test]
    fn plain_tar_without_extras_has_no_flags() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                dir("./"),
                file("./main.py", "x"),
                dir("./wheels/"),
                file("./wheels/README", "no wheels here"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["main.py", "wheels/README"]));
        assert!(!unpacked.has_requirements);
        assert!(!unpacked.has_wheels);
    }

    #[test]
    fn zip_bundle_unpacks() {
        let s = scratch();
        let unpacked = s
            .unpack(&zip_of(&[
                Z::File("main.py", 0o644, "def handler(e): return e\n"),
                Z::File("requirements.txt", 0o644, "six\n"),
                Z::Dir("wheels/"),
                Z::File("wheels/six-1.16.0-py2.py3-none-any.whl", 0o644, "wheel"),
                Z::File("bin/run.sh", 0o755, "#!/bin/sh\n"),
                Z::Symlink("handler.py", "main.py"),
            ]))
            .unwrap();
        assert_eq!(
            unpacked.files,
            paths(&[
                "bin/run.sh",
                "main.py",
                "requirements.txt",
                "wheels/six-1.16.0-py2.py3-none-any.whl",
            ])
        );
        assert!(unpacked.has_requirements);
        assert!(unpacked.has_wheels);
        assert_eq!(s.read("main.py"), "def handler(e): return e\n");
        assert_eq!(s.read("handler.py"), "def handler(e): return e\n");
        assert_eq!(s.mode("bin/run.sh"), 0o755);
        assert_eq!(s.mode("main.py"), 0o644);
    }

    #[test]
    fn empty_zip_unpacks_to_nothing() {
        let s = scratch();
        let unpacked = s.unpack(&zip_of(&[])).unwrap();
        assert!(unpacked.files.is_empty());
        assert_eq!(unpacked.total_bytes, 0);
    }

    #[test]
    fn destination_must_be_an_empty_directory() {
        let s = scratch();
        fs::write(s.dest.join("keep"), "mine").unwrap();
        let error = s.unpack(&tar_of(&[file("main.py", "")])).unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{error:?}");
        assert_eq!(s.read("keep"), "mine");
    }

    // ---- the wrapping directory -------------------------------------------------

    #[test]
    fn wrapping_directory_is_stripped() {
        // What `tar czf myfn.tgz myfn/` makes.
        let s = scratch();
        let unpacked = s
            .unpack(&gz(&tar_of(&[
                dir("myfn/"),
                file("myfn/main.py", "main"),
                file("myfn/requirements.txt", "six\n"),
                dir("myfn/myfn/"),
                file("myfn/myfn/inner.py", "inner"),
                symlink("myfn/alias.py", "main.py"),
            ])))
            .unwrap();
        assert_eq!(
            unpacked.files,
            paths(&["main.py", "myfn/inner.py", "requirements.txt"])
        );
        assert!(unpacked.has_requirements);
        assert_eq!(s.read("main.py"), "main");
        assert_eq!(s.read("myfn/inner.py"), "inner");
        assert_eq!(s.read("alias.py"), "main");
        let mut top: Vec<_> = fs::read_dir(&s.dest)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["alias.py", "main.py", "myfn", "requirements.txt"]);
    }

    #[test]
    fn wrapping_directory_kept_without_main_py_inside() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[dir("lib/"), file("lib/handler.py", "")]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["lib/handler.py"]));
    }

    #[test]
    fn symlink_escaping_only_after_unwrapping_is_refused() {
        // Inside `myfn/`, `../myfn/main.py` stays in the bundle; once `myfn/` is
        // removed from the paths it would point out of it.
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                dir("myfn/"),
                file("myfn/main.py", ""),
                symlink("myfn/link.py", "../myfn/main.py"),
            ])),
            &["myfn/link.py", "outside the bundle"],
        );
    }

    // ---- modes ------------------------------------------------------------------

    #[test]
    fn executable_bit_gives_0755() {
        let s = scratch();
        s.unpack(&tar_of(&[
            dir_mode("private/", 0o700),
            file_mode("private/run", 0o700, "#!/bin/sh\n"),
            file_mode("group-exec", 0o610, ""),
            file_mode("secret", 0o600, ""),
            file_mode("readonly", 0o400, ""),
        ]))
        .unwrap();
        assert_eq!(s.mode("private"), 0o755);
        assert_eq!(s.mode("private/run"), 0o755);
        assert_eq!(s.mode("group-exec"), 0o755);
        assert_eq!(s.mode("secret"), 0o644);
        assert_eq!(s.mode("readonly"), 0o644);
    }

    #[test]
    fn setuid_setgid_and_sticky_are_stripped() {
        let s = scratch();
        s.unpack(&tar_of(&[
            file_mode("suid", 0o4755, ""),
            file_mode("sgid", 0o2644, ""),
            dir_mode("sticky/", 0o1777),
        ]))
        .unwrap();
        assert_eq!(s.mode("suid"), 0o755);
        assert_eq!(s.mode("sgid"), 0o644);
        assert_eq!(s.mode("sticky"), 0o755);
    }

    // ---- paths ------------------------------------------------------------------

    #[test]
    fn absolute_path_refused() {
        let s = scratch();
        let outside = s.root.path().join("pwned");
        let name = outside.to_str().unwrap();
        s.refused(
            s.unpack(&tar_of(&[file("main.py", ""), file(name, "evil")])),
            &[name, "absolute path"],
        );
    }

    #[test]
    fn parent_dir_escape_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("main.py", ""), file("../escape", "evil")])),
            &["\"../escape\"", "`..`"],
        );
    }

    #[test]
    fn nested_parent_dir_escape_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&gz(&tar_of(&[dir("a/"), file("a/../../escape", "evil")]))),
            &["a/../../escape", "`..`"],
        );
    }

    #[test]
    fn dotdot_is_refused_even_when_it_stays_inside() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[dir("a/"), file("a/../main.py", "")])),
            &["a/../main.py", "`..`"],
        );
    }

    #[test]
    fn control_characters_and_backslashes_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("evil\nname.py", "")])),
            &["evil\\nname.py", "control character"],
        );
        s.refused(
            s.unpack(&tar_of(&[file("..\\escape.py", "")])),
            &["..\\\\escape.py", "backslash"],
        );
    }

    #[test]
    fn pax_path_with_nul_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", b"main.py\0../../x".as_slice())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("placeholder").unwrap();
        header.set_size(0);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, io::empty()).unwrap();
        let s = scratch();
        s.refused(
            s.unpack(&builder.into_inner().unwrap()),
            &["main.py", "NUL"],
        );
    }

    #[test]
    fn long_names_via_gnu_and_pax_headers() {
        let deep = format!("{}/main.py", "d".repeat(150));
        let long = format!("{}/util.py", "p".repeat(200));
        let mut builder = tar::Builder::new(Vec::new());
        // A GNU header with a name over 100 bytes gets a `././@LongLink` entry first.
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &deep, b"deep".as_slice())
            .unwrap();
        // A global pax header like the one `git archive` writes.
        builder.get_mut().extend_from_slice(&tar_entries(&[Raw {
            name: b"pax_global_header".to_vec(),
            kind: b'g',
            link: vec![],
            mode: 0o666,
            data: pax_records(&[("comment", b"0123abcd")]),
        }]));
        // A pax `path` record overriding the header's name.
        builder
            .append_pax_extensions([("path", long.as_bytes())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("short-placeholder").unwrap();
        header.set_size(4);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, b"util".as_slice()).unwrap();

        let s = scratch();
        let unpacked = s.unpack(&builder.into_inner().unwrap()).unwrap();
        let mut expected = paths(&[&deep, &long]);
        expected.sort();
        assert_eq!(unpacked.files, expected);
        assert_eq!(s.read(&deep), "deep");
        assert_eq!(s.read(&long), "util");
    }

    #[test]
    fn global_pax_header_renaming_entries_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                Raw {
                    name: b"pax_global_header".to_vec(),
                    kind: b'g',
                    link: vec![],
                    mode: 0o666,
                    data: pax_records(&[("path", b"../x")]),
                },
                file("main.py", ""),
            ])),
            &["global pax header", "`path`"],
        );
    }

    #[test]
    fn pax_size_disagreeing_with_header_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", b"4096".as_slice())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("main.py").unwrap();
        header.set_size(4);
        header.set_cksum();
        builder.append(&header, b"code".as_slice()).unwrap();
        let s = scratch();
        s.refused(
            s.unpack(&builder.into_inner().unwrap()),
            &["main.py", "pax size"],
        );
    }

    #[test]
    fn huge_extension_header_refused() {
        let mut out = Vec::new();
        let header = raw_header(b"././@LongLink", b'L', b"", 0o644, 1 << 30);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&[0; 4096]);
        let s = scratch();
        s.refused(s.unpack(&out), &["extension header", "1073741824 bytes"]);
    }

    // ---- symlinks ---------------------------------------------------------------

    #[test]
    fn symlink_to_absolute_path_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                file("main.py", ""),
                symlink("passwd", "/etc/passwd"),
            ])),
            &["\"passwd\"", "/etc/passwd", "absolute"],
        );
    }

    #[test]
    fn symlink_climbing_out_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[dir("sub/"), symlink("sub/link", "../../x")])),
            &["sub/link", "../../x", "leaves the bundle"],
        );
    }

    #[test]
    fn symlink_to_inside_is_kept() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                file("main.py", "code"),
                symlink("dir", "."),
                dir("pkg/"),
                symlink("pkg/main_link.py", "../main.py"),
                symlink("requirements.txt", "pkg/reqs.txt"),
                file("pkg/reqs.txt", "six\n"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["main.py", "pkg/reqs.txt"]));
        assert!(unpacked.has_requirements);
        assert_eq!(fs::read_link(s.dest.join("dir")).unwrap(), Path::new("."));
        assert_eq!(s.read("pkg/main_link.py"), "code");
        assert_eq!(s.read("dir/main.py"), "code");
    }

    #[test]
    fn write_through_outside_symlink_refused() {
        // The link is refused on its own; its follower never gets written.
        let s = scratch();
        let outside = s.root.path().to_str().unwrap().to_owned();
        s.refused(
            s.unpack(&tar_of(&[
                symlink("evil", &outside),
                file("evil/x", "pwned"),
            ])),
            &["\"evil\"", "absolute"],
        );
    }

    #[test]
    fn write_through_inside_symlink_refused() {
        // `inner -> sub` is allowed, but `inner/x` must not be written through it.
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                dir("sub/"),
                symlink("inner", "sub"),
                file("inner/x", "through the link"),
            ])),
            &["inner/x", "through the symlink", "\"inner\""],
        );
        s.refused(
            s.unpack(&tar_of(&[symlink("here", "."), file("here/x", "")])),
            &["here/x", "through the symlink"],
        );
    }

    #[test]
    fn symlink_escaping_through_another_symlink_refused() {
        // By spelling `d/l -> s/../x` is `d/x`; the kernel resolves `d/s` first (the
        // bundle root) and `..` then leaves the bundle.
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                dir("d/"),
                symlink("d/s", ".."),
                symlink("d/l", "s/../outside"),
            ])),
            &["d/l", "outside the bundle"],
        );
    }

    #[test]
    fn symlink_loop_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[symlink("a", "b"), symlink("b", "a")])),
            &["too many levels of symlinks"],
        );
    }

    // ---- hard links -------------------------------------------------------------

    #[test]
    fn hardlink_to_outside_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                file("main.py", ""),
                hardlink("passwd", "/etc/passwd"),
            ])),
            &["\"passwd\"", "/etc/passwd", "absolute"],
        );
        s.refused(
            s.unpack(&tar_of(&[hardlink("up", "../x")])),
            &["\"up\"", "`..`"],
        );
    }

    #[test]
    fn hardlink_to_a_later_or_missing_file_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                hardlink("early", "main.py"),
                file("main.py", ""),
            ])),
            &["\"early\"", "not a regular file unpacked before it"],
        );
        s.refused(
            s.unpack(&tar_of(&[dir("d/"), symlink("l", "d"), hardlink("h", "l")])),
            &["\"h\"", "not a regular file"],
        );
    }

    #[test]
    fn hardlink_to_earlier_file_works() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                file_mode("main.py", 0o755, "code"),
                hardlink("copy.py", "./main.py"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["copy.py", "main.py"]));
        assert_eq!(s.read("copy.py"), "code");
        assert_eq!(unpacked.total_bytes, 4);
    }

    // ---- special files ----------------------------------------------------------

    #[test]
    fn character_device_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("main.py", ""), special("null", b'3')])),
            &["\"null\"", "character device"],
        );
    }

    #[test]
    fn block_device_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[special("sda", b'4')])),
            &["\"sda\"", "block device"],
        );
    }

    #[test]
    fn fifo_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("main.py", ""), special("pipe", b'6')])),
            &["\"pipe\"", "FIFO"],
        );
    }

    #[test]
    fn unknown_tar_type_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[special("volume", b'V')])),
            &["\"volume\"", "'V'"],
        );
    }

    // ---- duplicates -------------------------------------------------------------

    #[test]
    fn later_entry_replaces_a_regular_file() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                file("main.py", "old"),
                file("./main.py", "new!"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["main.py"]));
        assert_eq!(s.read("main.py"), "new!");
    }

    #[test]
    fn later_entry_cannot_replace_a_directory_or_symlink() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[dir("pkg/"), file("pkg", "")])),
            &["\"pkg\"", "replace a directory"],
        );
        s.refused(
            s.unpack(&tar_of(&[
                file("main.py", ""),
                symlink("m", "main.py"),
                file("m", ""),
            ])),
            &["\"m\"", "replace a symlink"],
        );
        s.refused(
            s.unpack(&tar_of(&[file("x", ""), symlink("x", "main.py")])),
            &["\"x\"", "symlink would replace a regular file"],
        );
        s.refused(
            s.unpack(&tar_of(&[file("x", ""), dir("x/")])),
            &["\"x/\"", "directory would replace a regular file"],
        );
    }

    #[test]
    fn entry_below_a_file_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("a", ""), file("a/b", "")])),
            &["a/b", "is a regular file"],
        );
    }

    // ---- limits -----------------------------------------------------------------

    fn many_files(count: usize) -> Vec<Raw> {
        (0..count).map(|i| file(&format!("f{i}"), "x")).collect()
    }

    #[test]
    fn too_many_entries_refused_without_creating_more() {
        let limits = BundleLimits {
            max_entries: 10,
            ..BundleLimits::default()
        };
        let bundle = tar_of(&many_files(11));
        let s = scratch();
        s.refused(
            s.unpack_with(&bundle, &limits),
            &["\"f10\"", "more than 10 entries"],
        );

        let s = scratch();
        assert!(write_bundle(&bundle, &s.dest, &limits).is_err());
        assert_eq!(fs::read_dir(&s.dest).unwrap().count(), 10);
    }

    #[test]
    fn implied_directories_count_as_entries() {
        let limits = BundleLimits {
            max_entries: 3,
            ..BundleLimits::default()
        };
        let s = scratch();
        s.refused(
            s.unpack_with(&tar_of(&[file("a/b/c/d/e.py", "")]), &limits),
            &["a/b/c/d/e.py", "more than 3 entries"],
        );
    }

    #[test]
    fn ten_thousand_and_one_zip_entries_refused_up_front() {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..10_001 {
            writer.start_file(format!("f{i}"), options).unwrap();
        }
        let bundle = writer.finish().unwrap().into_inner();
        let s = scratch();
        s.refused(
            s.unpack(&bundle),
            &["\"f10000\"", "10001 entries", "limit of 10000"],
        );
    }

    #[test]
    fn too_many_tar_gz_entries_refused() {
        let limits = BundleLimits {
            max_entries: 100,
            ..BundleLimits::default()
        };
        let s = scratch();
        s.refused(
            s.unpack_with(&gz(&tar_of(&many_files(101))), &limits),
            &["\"f100\"", "more than 100 entries"],
        );
    }

    #[test]
    fn ten_thousand_entries_accepted_at_the_default_limit() {
        // 100 directories of 99 files, like a vendored package tree: 10 000 entries.
        let mut entries = Vec::new();
        for d in 0..100 {
            entries.push(dir(&format!("pkg{d}/")));
            entries.extend((0..99).map(|f| file(&format!("pkg{d}/m{f}.py"), "x")));
        }
        assert_eq!(entries.len(), 10_000);
        let bundle = gz(&tar_of(&entries));
        // On tmpfs when there is one: this test is about the count, and creating
        // 10 000 files on this machine's disk alone takes seconds.
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let s = Scratch { root, dest };
        let started = Instant::now();
        let unpacked = s.unpack(&bundle).unwrap();
        eprintln!("10 000 entries unpacked in {:?}", started.elapsed());
        assert_eq!(unpacked.files.len(), 9_900);
        assert_eq!(unpacked.total_bytes, 9_900);
    }

    /// A .tar.gz of `files` entries of `each` zero bytes, compressed on the fly: a few
    /// hundred KiB for hundreds of MiB unpacked.
    fn gzip_bomb(files: usize, each: u64) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for i in 0..files {
            let header = raw_header(format!("zeros{i}.bin").as_bytes(), b'0', b"", 0o644, each);
            encoder.write_all(header.as_bytes()).unwrap();
            let mut left = each;
            while left > 0 {
                let chunk = left.min(zeros.len() as u64) as usize;
                encoder.write_all(&zeros[..chunk]).unwrap();
                left -= chunk as u64;
            }
            let padding = (512 - each % 512) % 512;
            encoder.write_all(&zeros[..padding as usize]).unwrap();
        }
        encoder.write_all(&[0; 1024]).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_refused_by_total_bytes_without_writing_past_the_limit() {
        // 300 MiB of zeros in 1 MiB files; a 16 MiB total keeps the test quick and
        // behaves as the 256 MiB default would.
        let bomb = gzip_bomb(300, 1 << 20);
        assert!(bomb.len() < 2 << 20, "bomb is {} bytes", bomb.len());
        let limits = BundleLimits {
            max_total_bytes: 16 << 20,
            ..BundleLimits::default()
        };
        let s = scratch();
        s.refused(
            s.unpack_with(&bomb, &limits),
            &["\"zeros16.bin\"", "limit of 16777216 bytes"],
        );

        let s = scratch();
        assert!(write_bundle(&bomb, &s.dest, &limits).is_err());
        assert!(bytes_on_disk(&s.dest) <= 16 << 20);
    }

    #[test]
    fn gzip_bomb_of_one_huge_file_refused_before_writing() {
        let bomb = gzip_bomb(1, 300 << 20);
        let s = scratch();
        s.refused(
            s.unpack(&bomb),
            &[
                "\"zeros0.bin\"",
                "314572800 bytes",
                "limit of 268435456 bytes for one file",
            ],
        );
    }

    #[test]
    fn tar_stream_of_skipped_padding_refused() {
        // A directory entry claiming 64 MiB of data: nothing is written, but the stream
        // may not decompress to far more than the files could hold.
        let limits = BundleLimits {
            max_entries: 10,
            max_total_bytes: 1 << 20,
            max_file_bytes: 1 << 20,
        };
        let mut tar = raw_header(b"d/", b'5', b"", 0o755, 64 << 20)
            .as_bytes()
            .to_vec();
        tar.resize(tar.len() + (64 << 20), 0);
        tar.extend_from_slice(raw_header(b"main.py", b'0', b"", 0o644, 0).as_bytes());
        tar.extend_from_slice(&[0; 1024]);
        let s = scratch();
        s.refused(
            s.unpack_with(&gz(&tar), &limits),
            &["\"d/\"", "decompresses to more than"],
        );
    }

    #[test]
    fn truncated_tar_refused() {
        let mut tar = tar_of(&[file("main.py", &"x".repeat(2000))]);
        tar.truncate(512 + 1000);
        let s = scratch();
        s.refused(s.unpack(&tar), &["main.py"]);
    }

    #[test]
    fn zip_with_lying_size_refused() {
        // Central directory and local header say 100 bytes; the data inflates to 4 MiB.
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("main.py", options).unwrap();
        writer.write_all(b"pass\n").unwrap();
        writer.start_file("big.bin", options).unwrap();
        writer.write_all(&vec![0u8; 4 << 20]).unwrap();
        let mut bundle = writer.finish().unwrap().into_inner();
        let declared = (4u32 << 20).to_le_bytes();
        let mut patched = 0;
        for at in 0..bundle.len() - 30 {
            let field = match &bundle[at..at + 4] {
                b"PK\x03\x04" => at + 22,
                b"PK\x01\x02" => at + 24,
                _ => continue,
            };
            if bundle[field..field + 4] == declared {
                bundle[field..field + 4].copy_from_slice(&100u32.to_le_bytes());
                patched += 1;
            }
        }
        assert_eq!(patched, 2);
        let limits = BundleLimits {
            max_file_bytes: 1 << 20,
            ..BundleLimits::default()
        };
        let s = scratch();
        s.refused(s.unpack_with(&bundle, &limits), &["\"big.bin\""]);

        let s = scratch();
        assert!(write_bundle(&bundle, &s.dest, &limits).is_err());
        assert!(bytes_on_disk(&s.dest) <= 1 << 20);
    }

    #[test]
    fn zip_with_parent_path_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&zip_of(&[
                Z::File("main.py", 0o644, ""),
                Z::File("../escape.py", 0o644, "evil"),
            ])),
            &["\"../escape.py\"", "`..`"],
        );
    }

    #[test]
    fn zip_with_absolute_path_refused() {
        let s = scratch();
        let outside = s.root.path().join("pwned.py");
        let name = outside.to_str().unwrap();
        s.refused(
            s.unpack(&zip_of(&[Z::File(name, 0o644, "evil")])),
            &[name, "absolute path"],
        );
    }

    #[test]
    fn zip_with_windows_paths_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&zip_of(&[Z::File("C:\\Windows\\evil.py", 0o644, "")])),
            &["C:\\\\Windows", "backslash"],
        );
        s.refused(
            s.unpack(&zip_of(&[Z::File("C:/evil.py", 0o644, "")])),
            &["C:/evil.py", "drive letter"],
        );
        s.refused(
            s.unpack(&zip_of(&[Z::File("a\\..\\..\\evil.py", 0o644, "")])),
            &["backslash"],
        );
    }

    #[test]
    fn zip_symlink_out_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&zip_of(&[Z::Symlink("passwd", "/etc/passwd")])),
            &["\"passwd\"", "absolute"],
        );
        s.refused(
            s.unpack(&zip_of(&[Z::Symlink("up", "../../etc")])),
            &["\"up\"", "leaves the bundle"],
        );
    }

    #[test]
    fn zip_special_files_refused() {
        let s = scratch();
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        // unix_permissions keeps only the permission bits; set the type by hand in
        // the external attributes instead.
        writer
            .start_file("fifo", SimpleFileOptions::default())
            .unwrap();
        let mut bundle = writer.finish().unwrap().into_inner();
        let central = bundle
            .windows(4)
            .position(|window| window == b"PK\x01\x02")
            .unwrap();
        // Version made by: Unix (3); external attributes: S_IFIFO | 0644.
        bundle[central + 5] = 3;
        bundle[central + 38..central + 42].copy_from_slice(&((0o010644u32) << 16).to_le_bytes());
        s.refused(s.unpack(&bundle), &["\"fifo\"", "FIFO"]);
    }
}
