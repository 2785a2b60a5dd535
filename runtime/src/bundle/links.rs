//! Symlink targets: checked by their spelling when the entry is read, and again through
//! the whole unpacked tree, the way the kernel resolves them, once every entry is known.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::limits::MAX_RESOLVE_STEPS;
use super::paths::{check_spelling, shown};
use super::unpacker::Node;

/// Checks a symlink target by its spelling: relative, and resolved from the link's
/// directory as written it stays inside. [`resolve`] checks it again through the
/// unpacked tree once every entry is known.
pub(super) fn check_link_target(link: &Path, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    check_spelling(target).map_err(|why| format!("symlink target {}: {why}", shown(target)))?;
    let mut depth = link.components().count() - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if depth == 0 => {
                return Err(format!(
                    "symlink to {} leaves the bundle: links must point inside it",
                    shown(target)
                ));
            }
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Resolves `path` through the unpacked tree the way the kernel would, following
/// symlinks wherever they appear, and returns where it ends up. Fails if the walk
/// climbs above the root. A missing component is treated as a directory, so a
/// dangling link is judged by its spelling from there on.
pub(super) fn resolve(nodes: &BTreeMap<PathBuf, Node>, path: &Path) -> Result<PathBuf, String> {
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = path
        .iter()
        .rev()
        .map(|component| component.to_os_string())
        .collect();
    let mut at = PathBuf::new();
    let mut depth = 0usize;
    let mut steps = 0usize;
    while let Some(component) = pending.pop() {
        steps += 1;
        if steps > MAX_RESOLVE_STEPS {
            return Err("too many levels of symlinks".into());
        }
        if component == "." || component.is_empty() {
            continue;
        }
        if component == ".." {
            if depth == 0 {
                return Err("following the links on its way, it leads outside the bundle".into());
            }
            at.pop();
            depth -= 1;
            continue;
        }
        at.push(&component);
        depth += 1;
        match nodes.get(&at) {
            Some(Node::Symlink { target, .. }) => {
                at.pop();
                depth -= 1;
                pending.extend(target.split('/').rev().map(OsString::from));
            }
            // Looking up anything under a file fails (ENOTDIR): the walk ends here.
            Some(Node::File) if !pending.is_empty() => return Ok(at),
            _ => {}
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use crate::bundle::test_support::*;

    #[test]
    fn symlink_escaping_only_after_unwrapping_is_refused() {
        // Inside `myfn/`, `../myfn/main.py` stays in the bundle; once `myfn/` is
        // removed from the paths it would point out of it.
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                dir("myfn/"),
                file("myfn/main.py", ""),
                symlink("myfn/link.py", "../myfn/main.py"),
            ])),
            &["myfn/link.py", "outside the bundle"],
        );
    }

    #[test]
    fn symlink_to_absolute_path_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                file("main.py", ""),
                symlink("passwd", "/etc/passwd"),
            ])),
            &["\"passwd\"", "/etc/passwd", "absolute"],
        );
    }

    #[test]
    fn symlink_climbing_out_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[dir("sub/"), symlink("sub/link", "../../x")])),
            &["sub/link", "../../x", "leaves the bundle"],
        );
    }

    #[test]
    fn symlink_to_inside_is_kept() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                file("main.py", "code"),
                symlink("dir", "."),
                dir("pkg/"),
                symlink("pkg/main_link.py", "../main.py"),
                symlink("requirements.txt", "pkg/reqs.txt"),
                file("pkg/reqs.txt", "six\n"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["main.py", "pkg/reqs.txt"]));
        assert!(unpacked.has_requirements);
        assert_eq!(fs::read_link(s.dest.join("dir")).unwrap(), Path::new("."));
        assert_eq!(s.read("pkg/main_link.py"), "code");
        assert_eq!(s.read("dir/main.py"), "code");
    }

    #[test]
    fn symlink_escaping_through_another_symlink_refused() {
        // By spelling `d/l -> s/../x` is `d/x`; the kernel resolves `d/s` first (the
        // bundle root) and `..` then leaves the bundle.
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                dir("d/"),
                symlink("d/s", ".."),
                symlink("d/l", "s/../outside"),
            ])),
            &["d/l", "outside the bundle"],
        );
    }

    #[test]
    fn symlink_loop_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[symlink("a", "b"), symlink("b", "a")])),
            &["too many levels of symlinks"],
        );
    }

    #[test]
    fn zip_symlink_out_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&zip_of(&[Z::Symlink("passwd", "/etc/passwd")])),
            &["\"passwd\"", "absolute"],
        );
        s.refused(
            s.unpack(&zip_of(&[Z::Symlink("up", "../../etc")])),
            &["\"up\"", "leaves the bundle"],
        );
    }
}
