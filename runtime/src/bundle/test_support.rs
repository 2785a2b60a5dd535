//! Archive builders and assertions shared by the bundle tests.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::EntryType;
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

use super::{BundleLimits, Unpacked, unpack};
use crate::error::{Error, Result};

/// One tar entry, written by hand so that names the `tar` crate refuses to build
/// (`..`, absolute paths) can be crafted.
pub(super) struct Raw {
    pub(super) name: Vec<u8>,
    pub(super) kind: u8,
    pub(super) link: Vec<u8>,
    pub(super) mode: u32,
    pub(super) data: Vec<u8>,
}

pub(super) fn file(name: &str, data: &str) -> Raw {
    file_mode(name, 0o644, data)
}

pub(super) fn file_mode(name: &str, mode: u32, data: &str) -> Raw {
    Raw {
        name: name.into(),
        kind: b'0',
        link: vec![],
        mode,
        data: data.into(),
    }
}

pub(super) fn dir(name: &str) -> Raw {
    dir_mode(name, 0o755)
}

pub(super) fn dir_mode(name: &str, mode: u32) -> Raw {
    Raw {
        name: name.into(),
        kind: b'5',
        link: vec![],
        mode,
        data: vec![],
    }
}

pub(super) fn symlink(name: &str, target: &str) -> Raw {
    Raw {
        name: name.into(),
        kind: b'2',
        link: target.into(),
        mode: 0o777,
        data: vec![],
    }
}

pub(super) fn hardlink(name: &str, target: &str) -> Raw {
    Raw {
        name: name.into(),
        kind: b'1',
        link: target.into(),
        mode: 0o644,
        data: vec![],
    }
}

pub(super) fn special(name: &str, kind: u8) -> Raw {
    Raw {
        name: name.into(),
        kind,
        link: vec![],
        mode: 0o644,
        data: vec![],
    }
}

pub(super) fn raw_header(name: &[u8], kind: u8, link: &[u8], mode: u32, size: u64) -> tar::Header {
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
pub(super) fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
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

pub(super) fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut out = tar_entries(entries);
    out.extend_from_slice(&[0; 1024]);
    out
}

/// Entries without the end-of-archive blocks.
pub(super) fn tar_entries(entries: &[Raw]) -> Vec<u8> {
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

pub(super) fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(super) enum Z<'a> {
    File(&'a str, u32, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub(super) fn zip_of(entries: &[Z<'_>]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
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

/// A temporary directory holding only `dest`, so a test can see whether anything
/// was written beside it.
pub(super) struct Scratch {
    pub(super) root: TempDir,
    pub(super) dest: PathBuf,
}

pub(super) fn scratch() -> Scratch {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    fs::create_dir(&dest).unwrap();
    Scratch { root, dest }
}

impl Scratch {
    pub(super) fn unpack(&self, bytes: &[u8]) -> Result<Unpacked> {
        unpack(bytes, &self.dest, &BundleLimits::default())
    }

    pub(super) fn unpack_with(&self, bytes: &[u8], limits: &BundleLimits) -> Result<Unpacked> {
        unpack(bytes, &self.dest, limits)
    }

    /// Asserts a refusal whose message has every one of `needles`, and that
    /// nothing exists outside `dest` and `dest` is empty.
    #[track_caller]
    pub(super) fn refused(&self, result: Result<Unpacked>, needles: &[&str]) -> String {
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

    pub(super) fn read(&self, path: &str) -> String {
        fs::read_to_string(self.dest.join(path)).unwrap()
    }

    pub(super) fn mode(&self, path: &str) -> u32 {
        fs::symlink_metadata(self.dest.join(path)).unwrap().mode() & 0o7777
    }
}

pub(super) fn paths(names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(PathBuf::from).collect()
}

/// Bytes in regular files under `dir`.
pub(super) fn bytes_on_disk(dir: &Path) -> u64 {
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
