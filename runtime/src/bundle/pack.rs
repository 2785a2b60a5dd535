//! Packing files into a `.tar.gz` bundle in memory, the other direction of
//! [`unpack`](super::unpack): how the code itself makes bundles.

use std::io;

/// Packs regular files into a `.tar.gz` bundle, the format [`unpack`](super::unpack)
/// reads first: how the built-in bench functions, the benches and the tests make their
/// bundles. Each file gets mode 0644.
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
    use super::pack;
    use crate::bundle::ArchiveKind;
    use crate::bundle::test_support::scratch;

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
}
