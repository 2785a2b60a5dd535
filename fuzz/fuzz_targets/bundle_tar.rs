//! Uncompressed `.tar` bundles through `newt_runtime::unpack`, header checksums (and
//! the first header's `ustar` magic) fixed up so mutations reach the unpacker: names,
//! links, types, modes, sizes, GNU long names and pax records. Never a panic, never a
//! write outside the destination, nothing left behind by a refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: newt_fuzz::write_seeds(&newt_fuzz::seeds::tars()),
    |data: &[u8]| {
        let mut tar = data.to_vec();
        newt_fuzz::fix_tar(&mut tar);
        newt_fuzz::unpack_and_check(&tar);
    }
);
