//! Zip archives: the entry count is checked on the central directory up front, then each
//! entry is typed by its Unix mode and written by the unpacker.

use std::io::{Cursor, Read};

use super::limits::MAX_NAME_BYTES;
use super::paths::refuse;
use super::unpacker::{Unpacker, special_file};
use crate::error::{Error, Result};

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

pub(super) fn read_zip(bytes: &[u8], out: &mut Unpacker<'_>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use zip::write::SimpleFileOptions;

    use crate::bundle::test_support::*;

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
