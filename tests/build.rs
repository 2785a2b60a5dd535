//! Compiles the WAT guest fixtures in `fixtures/` to wasm in `OUT_DIR`, so tests use
//! binaries built from reviewed source and none are committed.

use std::path::Path;

fn main() {
    let fixtures = Path::new("fixtures");
    println!("cargo:rerun-if-changed=fixtures");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for entry in std::fs::read_dir(fixtures).expect("tests/fixtures exists") {
        let path = entry.expect("readable fixtures dir").path();
        if path.extension().is_some_and(|e| e == "wat") {
            let wasm = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().expect("fixture has a name");
            let dest = Path::new(&out).join(stem).with_extension("wasm");
            std::fs::write(&dest, wasm).expect("OUT_DIR is writable");
        }
    }
}
