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
//!
//! # Layout
//! - `limits`: [`BundleLimits`] and the fixed caps on names, headers and links.
//! - `paths`: entry names, checked by spelling and turned into relative paths.
//! - `links`: symlink targets, checked by spelling and through the unpacked tree.
//! - `unpacker`: the writer every format feeds, one entry at a time.
//! - `tar`, `zip`: reading each format into that writer.
//! - `pack`: the in-memory `.tar.gz` packer.
//! - `config`: the bundle's own `newt.toml` (Python version, build steps, variables).

use std::cell::Cell;
use std::fs;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

mod config;
mod limits;
mod links;
mod pack;
mod paths;
mod tar;
#[cfg(test)]
mod test_support;
mod unpacker;
mod zip;

pub use self::config::{BUNDLE_CONFIG_FILE, BundleConfig, check_env_name};
pub use self::limits::BundleLimits;
pub use self::pack::pack;

use self::tar::read_tar;
use self::unpacker::Unpacker;
use self::zip::read_zip;

/// What a refusal of an unknown format lists as accepted.
const ACCEPTED_FORMATS: &str = "a .tar.gz (.tgz), .tar or .zip archive";

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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::test_support::{Z, file, gz, scratch, tar_of, zip_of};
    use super::{ArchiveKind, Error};

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
    fn destination_must_be_an_empty_directory() {
        let s = scratch();
        fs::write(s.dest.join("keep"), "mine").unwrap();
        let error = s.unpack(&tar_of(&[file("main.py", "")])).unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{error:?}");
        assert_eq!(s.read("keep"), "mine");
    }
}
