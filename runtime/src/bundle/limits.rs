//! What an archive may unpack to: the configurable [`BundleLimits`], and the fixed caps
//! on names, tar extension headers, tar stream overhead and symlink resolution.

/// Longest entry name or symlink target, in bytes (Linux's `PATH_MAX` is 4096).
pub(super) const MAX_NAME_BYTES: usize = 4096;

/// Longest single path component, in bytes (Linux's `NAME_MAX`).
pub(super) const MAX_COMPONENT_BYTES: usize = 255;

/// Largest tar extension header (GNU long name or link, pax records) read into memory.
/// Real ones hold a path or a few attributes; without a cap, one header could ask us to
/// buffer gigabytes of decompressed zeros.
pub(super) const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// Headers and padding a tar stream may carry per entry beyond the files' bytes: a
/// 512-byte header, up to 511 bytes of padding and room for a long name or pax header.
pub(super) const TAR_OVERHEAD_PER_ENTRY: u64 = 8 * 1024;

/// Fixed allowance on top of [`TAR_OVERHEAD_PER_ENTRY`] (end-of-archive blocks, a pax
/// global header such as `git archive` writes).
pub(super) const TAR_OVERHEAD_FIXED: u64 = 1024 * 1024;

/// Most path components followed while resolving one symlink through the unpacked tree.
/// Real links resolve in a handful; the cap bounds the work a tree of links chained to
/// long targets can cost (the kernel stops after 40 links for the same reason).
pub(super) const MAX_RESOLVE_STEPS: usize = 256;

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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::{Cursor, Write};
    use std::path::Path;
    use std::time::Instant;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use zip::write::SimpleFileOptions;

    use super::BundleLimits;
    use crate::bundle::test_support::*;
    use crate::bundle::write_bundle;

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
}
