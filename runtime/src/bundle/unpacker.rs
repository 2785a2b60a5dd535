//! The writer every archive format feeds: it creates entries one at a time inside the
//! destination, never through a link, and counts them against the limits.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Unpacked;
use super::limits::{BundleLimits, TAR_OVERHEAD_FIXED, TAR_OVERHEAD_PER_ENTRY};
use super::links::{check_link_target, resolve};
use super::paths::{entry_path, refuse, shown, shown_path};
use crate::error::{Error, Result};

/// Bytes copied per read while writing a file.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// What one path of the unpacked tree is.
#[derive(Debug)]
pub(super) enum Node {
    Dir,
    File,
    Symlink {
        /// The target as the archive gave it (relative, checked).
        target: String,
        /// The entry's name in the archive, for messages.
        entry: String,
    },
}

impl Node {
    fn describe(&self) -> &'static str {
        match self {
            Node::Dir => "a directory",
            Node::File => "a regular file",
            Node::Symlink { .. } => "a symlink",
        }
    }
}

/// Writes entries into the destination and remembers what it wrote.
pub(super) struct Unpacker<'a> {
    dest: &'a Path,
    pub(super) limits: &'a BundleLimits,
    /// Set by the [`Budget`] reader under a tar stream when it ran out.
    pub(super) over_budget: &'a Cell<bool>,
    /// Every path created, relative to `dest`. The source of truth for "what is
    /// there": nothing but this unpacking writes into `dest`.
    nodes: BTreeMap<PathBuf, Node>,
    /// Entries counted against [`BundleLimits::max_entries`].
    entries: usize,
    /// Bytes written to files so far.
    total_bytes: u64,
}

impl<'a> Unpacker<'a> {
    pub(super) fn new(
        dest: &'a Path,
        limits: &'a BundleLimits,
        over_budget: &'a Cell<bool>,
    ) -> Self {
        Unpacker {
            dest,
            limits,
            over_budget,
            nodes: BTreeMap::new(),
            entries: 0,
            total_bytes: 0,
        }
    }

    /// The most a tar stream may decompress to: the files' bytes plus headers and
    /// padding for as many entries as allowed.
    fn stream_budget(&self) -> u64 {
        let entries = u64::try_from(self.limits.max_entries).unwrap_or(u64::MAX);
        self.limits
            .max_total_bytes
            .saturating_add(
                entries
                    .saturating_add(1)
                    .saturating_mul(TAR_OVERHEAD_PER_ENTRY),
            )
            .saturating_add(TAR_OVERHEAD_FIXED)
    }

    /// Wraps a tar stream in a reader that stops at [`Self::stream_budget`].
    pub(super) fn budget<R: Read>(&self, inner: R) -> Budget<'a, R> {
        Budget {
            inner,
            left: self.stream_budget(),
            tripped: self.over_budget,
        }
    }

    /// The refusal for a tar stream that ran over its budget.
    pub(super) fn over_budget_error(&self, place: &str) -> Error {
        Error::InvalidBundle(format!(
            "{place}: the archive decompresses to more than {} bytes, more than its files \
             may hold ({} bytes) plus headers",
            self.stream_budget(),
            self.limits.max_total_bytes
        ))
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.dest.join(path)
    }

    /// Counts one entry (an archive member or an implied directory) against the limit,
    /// before anything is created for it.
    fn count(&mut self, entry: &str) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(refuse(
                entry,
                format!(
                    "the bundle has more than {} entries (files, directories and links)",
                    self.limits.max_entries
                ),
            ));
        }
        Ok(())
    }

    /// Makes sure every parent of `path` is a real directory created by this
    /// unpacking, creating the missing ones. An entry under a file or a symlink is
    /// refused: writing it would go through the link.
    fn make_parents(&mut self, entry: &str, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.iter() {
            prefix.push(component);
            match self.nodes.get(&prefix) {
                Some(Node::Dir) => {
                    // The map says directory; make sure the disk agrees, so a bug here
                    // can never turn into a write through a link.
                    let full = self.full(&prefix);
                    let metadata = fs::symlink_metadata(&full)
                        .map_err(|e| Error::io("inspecting", &full, e))?;
                    if !metadata.is_dir() {
                        return Err(refuse(
                            entry,
                            format!("{} is not a directory on disk", shown_path(&prefix)),
                        ));
                    }
                }
                Some(Node::File) => {
                    return Err(refuse(
                        entry,
                        format!("its parent {} is a regular file", shown_path(&prefix)),
                    ));
                }
                Some(Node::Symlink { .. }) => {
                    return Err(refuse(
                        entry,
                        format!(
                            "it would be written through the symlink {}",
                            shown_path(&prefix)
                        ),
                    ));
                }
                None => {
                    self.count(entry)?;
                    self.create_dir(&prefix)?;
                }
            }
        }
        Ok(())
    }

    fn create_dir(&mut self, path: &Path) -> Result<()> {
        let full = self.full(path);
        // `create` fails if anything, a symlink included, is already there.
        DirBuilder::new()
            .mode(0o755)
            .create(&full)
            .map_err(|e| Error::io("creating", &full, e))?;
        // The umask may have taken bits off; directories are always 0755.
        fs::set_permissions(&full, Permissions::from_mode(0o755))
            .map_err(|e| Error::io("setting permissions of", &full, e))?;
        self.nodes.insert(path.to_path_buf(), Node::Dir);
        Ok(())
    }

    /// Clears the way for a regular file at `path`: an earlier regular file there is
    /// removed (a later tar entry wins), anything else refuses the entry.
    fn replace_file(&mut self, entry: &str, path: &Path) -> Result<()> {
        match self.nodes.get(path) {
            None => Ok(()),
            Some(Node::File) => {
                let full = self.full(path);
                let metadata =
                    fs::symlink_metadata(&full).map_err(|e| Error::io("inspecting", &full, e))?;
                if !metadata.is_file() {
                    return Err(refuse(
                        entry,
                        "the file it replaces is not a regular file on disk",
                    ));
                }
                fs::remove_file(&full).map_err(|e| Error::io("removing", &full, e))?;
                self.nodes.remove(path);
                Ok(())
            }
            Some(other) => Err(refuse(
                entry,
                format!("a file would replace {} of the same name", other.describe()),
            )),
        }
    }

    pub(super) fn add_dir(&mut self, entry: &str) -> Result<()> {
        self.count(entry)?;
        let Some(path) = entry_path(entry).map_err(|why| refuse(entry, why))? else {
            // `./`: the bundle root, which exists already.
            return Ok(());
        };
        self.make_parents(entry, &path)?;
        match self.nodes.get(&path) {
            None => self.create_dir(&path),
            Some(Node::Dir) => Ok(()),
            Some(other) => Err(refuse(
                entry,
                format!(
                    "a directory would replace {} of the same name",
                    other.describe()
                ),
            )),
        }
    }

    /// Writes a regular file from `data`, which claims to hold `declared` bytes.
    pub(super) fn add_file(
        &mut self,
        entry: &str,
        executable: bool,
        declared: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        self.count(entry)?;
        let path = entry_path(entry)
            .map_err(|why| refuse(entry, why))?
            .ok_or_else(|| refuse(entry, "a file with an empty name"))?;
        let max_file = self.limits.max_file_bytes;
        let max_total = self.limits.max_total_bytes;
        // Refuse on the declared size before writing anything; the bytes actually read
        // are checked again below, since the declaration can lie.
        if declared > max_file {
            return Err(refuse(
                entry,
                format!("it is {declared} bytes, over the limit of {max_file} bytes for one file"),
            ));
        }
        if declared > max_total - self.total_bytes {
            return Err(refuse(
                entry,
                format!("it would bring the bundle over its limit of {max_total} bytes unpacked"),
            ));
        }
        self.make_parents(entry, &path)?;
        self.replace_file(entry, &path)?;

        let full = self.full(&path);
        // `create_new` is O_CREAT|O_EXCL: it fails on anything already there and never
        // follows a symlink.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&full)
            .map_err(|e| Error::io("creating", &full, e))?;
        self.nodes.insert(path, Node::File);

        let cap = max_file.min(max_total - self.total_bytes);
        let mut limited = data.take(cap.saturating_add(1));
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut written = 0u64;
        loop {
            let read = match limited.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.over_budget.get() => {
                    return Err(self.over_budget_error(&format!("entry {}", shown(entry))));
                }
                Err(e) => return Err(refuse(entry, format!("cannot read its data: {e}"))),
            };
            // Never write past a limit: refuse before the write that would cross it.
            let after = written + read as u64;
            if after > cap {
                return Err(if after > max_file {
                    refuse(
                        entry,
                        format!("it holds more than {max_file} bytes, the limit for one file"),
                    )
                } else {
                    refuse(
                        entry,
                        format!(
                            "it brings the bundle over its limit of {max_total} bytes unpacked"
                        ),
                    )
                });
            }
            file.write_all(&buffer[..read])
                .map_err(|e| Error::io("writing", &full, e))?;
            written = after;
        }
        if written != declared {
            return Err(refuse(
                entry,
                format!("it holds {written} bytes but its header declares {declared}"),
            ));
        }
        self.total_bytes += written;
        let mode = if executable { 0o755 } else { 0o644 };
        // Through the open handle (fchmod), not the path.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| Error::io("setting permissions of", &full, e))?;
        Ok(())
    }

    pub(super) fn add_symlink(&mut self, entry: &str, target: &str) -> Result<()> {
        self.count(entry)?;
        let path = entry_path(entry)
            .map_err(|why| refuse(entry, why))?
            .ok_or_else(|| refuse(entry, "a symlink with an empty name"))?;
        check_link_target(&path, target).map_err(|why| refuse(entry, why))?;
        self.make_parents(entry, &path)?;
        if let Some(existing) = self.nodes.get(&path) {
            return Err(refuse(
                entry,
                format!(
                    "a symlink would replace {} of the same name",
                    existing.describe()
                ),
            ));
        }
        let full = self.full(&path);
        // symlink(2) fails if anything is already there; it never follows one.
        std::os::unix::fs::symlink(target, &full).map_err(|e| Error::io("creating", &full, e))?;
        self.nodes.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
                entry: entry.to_owned(),
            },
        );
        Ok(())
    }

    /// A tar hard link: `target` is another entry's name, relative to the archive root.
    pub(super) fn add_hardlink(&mut self, entry: &str, target: &str) -> Result<()> {
        self.count(entry)?;
        let path = entry_path(entry)
            .map_err(|why| refuse(entry, why))?
            .ok_or_else(|| refuse(entry, "a hard link with an empty name"))?;
        let target_path = entry_path(target)
            .map_err(|why| refuse(entry, format!("hard link to {}: {why}", shown(target))))?
            .ok_or_else(|| refuse(entry, "a hard link to the bundle root"))?;
        if !matches!(self.nodes.get(&target_path), Some(Node::File)) {
            return Err(refuse(
                entry,
                format!(
                    "hard link to {}, which is not a regular file unpacked before it",
                    shown(target)
                ),
            ));
        }
        if target_path == path {
            return Err(refuse(entry, "a hard link to itself"));
        }
        self.make_parents(entry, &path)?;
        self.replace_file(entry, &path)?;
        let (full_target, full) = (self.full(&target_path), self.full(&path));
        let metadata = fs::symlink_metadata(&full_target)
            .map_err(|e| Error::io("inspecting", &full_target, e))?;
        if !metadata.is_file() {
            return Err(refuse(
                entry,
                format!(
                    "hard link to {}, which is not a regular file on disk",
                    shown(target)
                ),
            ));
        }
        // link(2) without AT_SYMLINK_FOLLOW: links the file itself, never a link's target.
        fs::hard_link(&full_target, &full).map_err(|e| Error::io("linking", &full, e))?;
        self.nodes.insert(path, Node::File);
        Ok(())
    }

    /// Removes a wrapping directory if there is one, checks every symlink against the
    /// final tree and reports what was unpacked.
    pub(super) fn finish(mut self) -> Result<Unpacked> {
        self.unwrap_single_dir()?;
        for (path, node) in &self.nodes {
            if let Node::Symlink { target, entry } = node {
                resolve(&self.nodes, path)
                    .map_err(|why| refuse(entry, format!("symlink to {}: {why}", shown(target))))?;
            }
        }
        let files: Vec<PathBuf> = self
            .nodes
            .iter()
            .filter(|(_, node)| matches!(node, Node::File))
            .map(|(path, _)| path.clone())
            .collect();
        let requirements = Path::new("requirements.txt");
        let has_requirements = self.nodes.contains_key(requirements)
            && resolve(&self.nodes, requirements)
                .is_ok_and(|at| matches!(self.nodes.get(&at), Some(Node::File)));
        let has_wheels = matches!(self.nodes.get(Path::new("wheels")), Some(Node::Dir))
            && files.iter().any(|file| {
                file.parent() == Some(Path::new("wheels"))
                    && file.extension().is_some_and(|ext| ext == "whl")
            });
        Ok(Unpacked {
            files,
            total_bytes: self.total_bytes,
            has_requirements,
            has_wheels,
        })
    }

    /// If there is no `main.py` at the root and everything sits in one top-level
    /// directory that has one, moves that directory's contents up to the root.
    fn unwrap_single_dir(&mut self) -> Result<()> {
        if self.nodes.contains_key(Path::new("main.py")) {
            return Ok(());
        }
        let mut roots = self
            .nodes
            .iter()
            .filter(|(path, _)| path.components().count() == 1);
        let (Some((top, Node::Dir)), None) = (roots.next(), roots.next()) else {
            return Ok(());
        };
        if !matches!(
            self.nodes.get(&top.join("main.py")),
            Some(Node::File | Node::Symlink { .. })
        ) {
            return Ok(());
        }
        let top = top.clone();
        let children: Vec<OsString> = self
            .nodes
            .keys()
            .filter(|path| path.parent() == Some(top.as_path()))
            .filter_map(|path| path.file_name().map(OsString::from))
            .collect();
        // Rename the wrapper out of the way first: it may hold an entry of its own name
        // (`myfn/myfn/`). The temporary name must clash with neither.
        let mut parked = OsString::from(".newt-unwrap");
        let mut attempt = 0;
        while parked == top.as_os_str() || children.contains(&parked) {
            attempt += 1;
            parked = OsString::from(format!(".newt-unwrap-{attempt}"));
        }
        let parked = self.full(Path::new(&parked));
        let wrapper = self.full(&top);
        fs::rename(&wrapper, &parked).map_err(|e| Error::io("renaming", &wrapper, e))?;
        for child in &children {
            let from = parked.join(child);
            // rename(2) moves a symlink itself, never what it points to.
            fs::rename(&from, self.dest.join(child))
                .map_err(|e| Error::io("renaming", &from, e))?;
        }
        fs::remove_dir(&parked).map_err(|e| Error::io("removing", &parked, e))?;
        self.nodes = std::mem::take(&mut self.nodes)
            .into_iter()
            .filter_map(|(path, node)| {
                let inner = path.strip_prefix(&top).ok()?;
                (!inner.as_os_str().is_empty()).then(|| (inner.to_path_buf(), node))
            })
            .collect();
        Ok(())
    }
}

/// A reader that fails once `left` bytes have been read, recording that it did.
pub(super) struct Budget<'a, R> {
    inner: R,
    left: u64,
    tripped: &'a Cell<bool>,
}

impl<R: Read> Read for Budget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // Exactly at the budget is fine if the stream ends here.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.tripped.set(true);
                    Err(io::Error::other("the archive stream is over its budget"))
                }
            };
        }
        let room = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let read = self.inner.read(&mut buf[..room])?;
        self.left -= read as u64;
        Ok(read)
    }
}

pub(super) fn special_file(what: &str) -> String {
    format!("it is {what}; a bundle may hold only regular files, directories and links")
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::bundle::test_support::*;

    // ---- the wrapping directory -------------------------------------------------

    #[test]
    fn wrapping_directory_is_stripped() {
        // What `tar czf myfn.tgz myfn/` makes.
        let s = scratch();
        let unpacked = s
            .unpack(&gz(&tar_of(&[
                dir("myfn/"),
                file("myfn/main.py", "main"),
                file("myfn/requirements.txt", "six\n"),
                dir("myfn/myfn/"),
                file("myfn/myfn/inner.py", "inner"),
                symlink("myfn/alias.py", "main.py"),
            ])))
            .unwrap();
        assert_eq!(
            unpacked.files,
            paths(&["main.py", "myfn/inner.py", "requirements.txt"])
        );
        assert!(unpacked.has_requirements);
        assert_eq!(s.read("main.py"), "main");
        assert_eq!(s.read("myfn/inner.py"), "inner");
        assert_eq!(s.read("alias.py"), "main");
        let mut top: Vec<_> = fs::read_dir(&s.dest)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["alias.py", "main.py", "myfn", "requirements.txt"]);
    }

    #[test]
    fn wrapping_directory_kept_without_main_py_inside() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[dir("lib/"), file("lib/handler.py", "")]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["lib/handler.py"]));
    }

    // ---- modes ------------------------------------------------------------------

    #[test]
    fn executable_bit_gives_0755() {
        let s = scratch();
        s.unpack(&tar_of(&[
            dir_mode("private/", 0o700),
            file_mode("private/run", 0o700, "#!/bin/sh\n"),
            file_mode("group-exec", 0o610, ""),
            file_mode("secret", 0o600, ""),
            file_mode("readonly", 0o400, ""),
        ]))
        .unwrap();
        assert_eq!(s.mode("private"), 0o755);
        assert_eq!(s.mode("private/run"), 0o755);
        assert_eq!(s.mode("group-exec"), 0o755);
        assert_eq!(s.mode("secret"), 0o644);
        assert_eq!(s.mode("readonly"), 0o644);
    }

    #[test]
    fn setuid_setgid_and_sticky_are_stripped() {
        let s = scratch();
        s.unpack(&tar_of(&[
            file_mode("suid", 0o4755, ""),
            file_mode("sgid", 0o2644, ""),
            dir_mode("sticky/", 0o1777),
        ]))
        .unwrap();
        assert_eq!(s.mode("suid"), 0o755);
        assert_eq!(s.mode("sgid"), 0o644);
        assert_eq!(s.mode("sticky"), 0o755);
    }

    #[test]
    fn write_through_outside_symlink_refused() {
        // The link is refused on its own; its follower never gets written.
        let s = scratch();
        let outside = s.root.path().to_str().unwrap().to_owned();
        s.refused(
            s.unpack(&tar_of(&[
                symlink("evil", &outside),
                file("evil/x", "pwned"),
            ])),
            &["\"evil\"", "absolute"],
        );
    }

    #[test]
    fn write_through_inside_symlink_refused() {
        // `inner -> sub` is allowed, but `inner/x` must not be written through it.
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                dir("sub/"),
                symlink("inner", "sub"),
                file("inner/x", "through the link"),
            ])),
            &["inner/x", "through the symlink", "\"inner\""],
        );
        s.refused(
            s.unpack(&tar_of(&[symlink("here", "."), file("here/x", "")])),
            &["here/x", "through the symlink"],
        );
    }

    // ---- hard links -------------------------------------------------------------

    #[test]
    fn hardlink_to_outside_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                file("main.py", ""),
                hardlink("passwd", "/etc/passwd"),
            ])),
            &["\"passwd\"", "/etc/passwd", "absolute"],
        );
        s.refused(
            s.unpack(&tar_of(&[hardlink("up", "../x")])),
            &["\"up\"", "`..`"],
        );
    }

    #[test]
    fn hardlink_to_a_later_or_missing_file_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                hardlink("early", "main.py"),
                file("main.py", ""),
            ])),
            &["\"early\"", "not a regular file unpacked before it"],
        );
        s.refused(
            s.unpack(&tar_of(&[dir("d/"), symlink("l", "d"), hardlink("h", "l")])),
            &["\"h\"", "not a regular file"],
        );
    }

    #[test]
    fn hardlink_to_earlier_file_works() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                file_mode("main.py", 0o755, "code"),
                hardlink("copy.py", "./main.py"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["copy.py", "main.py"]));
        assert_eq!(s.read("copy.py"), "code");
        assert_eq!(unpacked.total_bytes, 4);
    }

    // ---- duplicates -------------------------------------------------------------

    #[test]
    fn later_entry_replaces_a_regular_file() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                file("main.py", "old"),
                file("./main.py", "new!"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["main.py"]));
        assert_eq!(s.read("main.py"), "new!");
    }

    #[test]
    fn later_entry_cannot_replace_a_directory_or_symlink() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[dir("pkg/"), file("pkg", "")])),
            &["\"pkg\"", "replace a directory"],
        );
        s.refused(
            s.unpack(&tar_of(&[
                file("main.py", ""),
                symlink("m", "main.py"),
                file("m", ""),
            ])),
            &["\"m\"", "replace a symlink"],
        );
        s.refused(
            s.unpack(&tar_of(&[file("x", ""), symlink("x", "main.py")])),
            &["\"x\"", "symlink would replace a regular file"],
        );
        s.refused(
            s.unpack(&tar_of(&[file("x", ""), dir("x/")])),
            &["\"x/\"", "directory would replace a regular file"],
        );
    }

    #[test]
    fn entry_below_a_file_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("a", ""), file("a/b", "")])),
            &["a/b", "is a regular file"],
        );
    }
}
