//! `.zip` bundles through `newt_runtime::unpack`, as they come: local headers, the
//! central directory, unix modes and symlinks, stored and deflated data, lying sizes.
//! Never a panic, never a write outside the destination, nothing left behind by a
//! refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: newt_fuzz::write_seeds(&newt_fuzz::seeds::zips()),
    |data: &[u8]| {
        newt_fuzz::unpack_and_check(data);
    }
);
