//! `.tar.gz` bundles through `newt_runtime::unpack`. An input starting with the gzip
//! magic is taken as it is (corrupt streams, trailing members, lying sizes); any other
//! is a tar whose header checksums are fixed up, then gzipped, so mutations reach the
//! unpacker rather than stop at a checksum. Never a panic, never a write outside the
//! destination, nothing left behind by a refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: newt_fuzz::write_seeds(&newt_fuzz::seeds::targz()),
    |data: &[u8]| {
        if data.starts_with(&[0x1f, 0x8b]) {
            newt_fuzz::unpack_and_check(data);
        } else {
            let mut tar = data.to_vec();
            newt_fuzz::fix_tar(&mut tar);
            newt_fuzz::unpack_and_check(&newt_fuzz::gzip(&tar));
        }
    }
);
