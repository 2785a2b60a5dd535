//! Entry names: how an archive may spell them, the relative paths they become, and how
//! a refusal quotes them.

use std::path::{Path, PathBuf};

use super::limits::{MAX_COMPONENT_BYTES, MAX_NAME_BYTES};
use crate::error::Error;

/// A refusal naming `entry` as the archive spelled it.
pub(super) fn refuse(entry: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidBundle(format!("entry {}: {why}", shown(entry)))
}

/// An entry name quoted for a message: escaped (no raw control characters reach a log
/// or a terminal) and cut short (a hostile name can be kilobytes long).
pub(super) fn shown(name: &str) -> String {
    const MAX_SHOWN_CHARS: usize = 200;
    if name.chars().count() <= MAX_SHOWN_CHARS {
        format!("{name:?}")
    } else {
        let cut: String = name.chars().take(MAX_SHOWN_CHARS).collect();
        format!("{cut:?}…")
    }
}

pub(super) fn shown_path(path: &Path) -> String {
    shown(&path.to_string_lossy())
}

/// Checks the characters of an entry name or symlink target.
pub(super) fn check_spelling(name: &str) -> Result<(), String> {
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
pub(super) fn entry_path(name: &str) -> Result<Option<PathBuf>, String> {
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

#[cfg(test)]
mod tests {
    use std::io;

    use crate::bundle::test_support::*;

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
}
