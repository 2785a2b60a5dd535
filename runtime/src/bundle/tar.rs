//! Tar streams, plain or gzip-compressed, read entry by entry into the unpacker with GNU
//! long names and pax headers handled (and capped) here.

use std::io::{self, Read};

use tar::EntryType;

use super::limits::MAX_EXTENSION_BYTES;
use super::paths::{refuse, shown};
use super::unpacker::{Budget, Unpacker, special_file};
use crate::error::{Error, Result};

/// Names and sizes carried by tar extension headers for the entry that follows them.
#[derive(Default)]
struct TarExtensions {
    gnu_long_name: Option<Vec<u8>>,
    gnu_long_link: Option<Vec<u8>>,
    pax: bool,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

impl TarExtensions {
    fn is_empty(&self) -> bool {
        self.gnu_long_name.is_none() && self.gnu_long_link.is_none() && !self.pax
    }

    /// Reads one extension header (`L`, `K`, `x` or `g`) into `self`.
    fn read(&mut self, kind: EntryType, data: &mut dyn Read, size: u64, place: &str) -> Result<()> {
        let bad = |why: String| Error::InvalidBundle(format!("{place}: {why}"));
        if size > MAX_EXTENSION_BYTES {
            return Err(bad(format!(
                "a tar extension header of {size} bytes (at most {MAX_EXTENSION_BYTES})"
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        data.take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read a tar extension header: {e}")))?;
        match kind {
            EntryType::GNULongName | EntryType::GNULongLink => {
                while bytes.last() == Some(&0) {
                    bytes.pop();
                }
                let slot = if kind == EntryType::GNULongName {
                    &mut self.gnu_long_name
                } else {
                    &mut self.gnu_long_link
                };
                if slot.replace(bytes).is_some() {
                    return Err(bad("two GNU long names for one entry".into()));
                }
            }
            EntryType::XHeader => {
                if std::mem::replace(&mut self.pax, true) {
                    return Err(bad("two pax headers for one entry".into()));
                }
                for record in tar::PaxExtensions::new(&bytes) {
                    let record = record.map_err(|e| bad(format!("malformed pax header: {e}")))?;
                    match record.key_bytes() {
                        b"path" => self.pax_path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => self.pax_link = Some(record.value_bytes().to_vec()),
                        b"size" => {
                            let size = record
                                .value()
                                .ok()
                                .and_then(|value| value.parse::<u64>().ok())
                                .ok_or_else(|| bad("malformed pax size record".into()))?;
                            self.pax_size = Some(size);
                        }
                        // mtime, uid, xattrs, comments...: nothing we apply.
                        _ => {}
                    }
                }
            }
            _ => {
                // A global pax header (`git archive` writes one with a comment). One that
                // renames or resizes what follows is refused rather than guessed at.
                for record in tar::PaxExtensions::new(&bytes) {
                    let record = record.map_err(|e| bad(format!("malformed pax header: {e}")))?;
                    let key = record.key_bytes();
                    if matches!(key, b"path" | b"linkpath" | b"size") {
                        return Err(bad(format!(
                            "a global pax header sets `{}` for every entry; not supported",
                            String::from_utf8_lossy(key)
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes a tar name as UTF-8 (bundles are code: non-UTF-8 names have no use and
/// cannot be named in a message faithfully).
fn utf8_name(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::InvalidBundle(format!(
            "entry {}: its {what} is not valid UTF-8",
            shown(&String::from_utf8_lossy(bytes))
        ))
    })
}

/// Reads a tar stream entry by entry. The `tar` crate's raw mode is used so that GNU
/// long names and pax headers are handled here, with a size cap, rather than read into
/// memory whole.
pub(super) fn read_tar<R: Read>(stream: Budget<'_, R>, out: &mut Unpacker<'_>) -> Result<()> {
    let mut archive = tar::Archive::new(stream);
    let mut last: Option<String> = None;
    let place = |last: &Option<String>| match last {
        Some(name) => format!("after entry {}", shown(name)),
        None => "at the start of the archive".into(),
    };
    let stream_error = |out: &Unpacker<'_>, last: &Option<String>, e: io::Error| {
        if out.over_budget.get() {
            out.over_budget_error(&place(last))
        } else {
            Error::InvalidBundle(format!("corrupt tar archive {}: {e}", place(last)))
        }
    };
    let entries = archive
        .entries()
        .map_err(|e| stream_error(out, &last, e))?
        .raw(true);
    let mut extensions = TarExtensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(out, &last, e))?;
        let header = entry.header();
        let kind = header.entry_type();
        let size = header
            .entry_size()
            .map_err(|e| stream_error(out, &last, e))?;
        if matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        ) {
            let place = format!("the extension header {}", place(&last));
            extensions.read(kind, &mut entry, size, &place)?;
            continue;
        }

        let header = entry.header();
        let ext = std::mem::take(&mut extensions);
        let name_bytes = ext
            .pax_path
            .or(ext.gnu_long_name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let name = utf8_name(&name_bytes, "name")?;
        last = Some(name.clone());
        let link_bytes = ext
            .pax_link
            .or(ext.gnu_long_link)
            .or_else(|| header.link_name_bytes().map(|link| link.into_owned()));
        if let Some(pax_size) = ext.pax_size
            && pax_size != size
        {
            // Parsers disagree on which one wins; refuse rather than pick.
            return Err(refuse(
                &name,
                format!("its pax size ({pax_size}) disagrees with its header ({size})"),
            ));
        }
        let mode = header
            .mode()
            .map_err(|e| refuse(&name, format!("corrupt header: {e}")))?;
        let link_target = || -> Result<String> {
            let bytes = link_bytes
                .as_deref()
                .ok_or_else(|| refuse(&name, "a link without a target"))?;
            let target = std::str::from_utf8(bytes)
                .map_err(|_| refuse(&name, "its link target is not valid UTF-8"))?;
            Ok(target.to_owned())
        };
        match kind {
            // Old tars mark directories by a trailing slash on a regular entry.
            EntryType::Regular | EntryType::Continuous if name.ends_with('/') => {
                out.add_dir(&name)?
            }
            EntryType::Regular | EntryType::Continuous => {
                out.add_file(&name, mode & 0o111 != 0, size, &mut entry)?
            }
            EntryType::Directory => out.add_dir(&name)?,
            EntryType::Symlink => {
                let target = link_target()?;
                out.add_symlink(&name, &target)?
            }
            EntryType::Link => {
                let target = link_target()?;
                out.add_hardlink(&name, &target)?
            }
            EntryType::Char => return Err(refuse(&name, special_file("a character device"))),
            EntryType::Block => return Err(refuse(&name, special_file("a block device"))),
            EntryType::Fifo => return Err(refuse(&name, special_file("a FIFO (named pipe)"))),
            EntryType::GNUSparse => return Err(refuse(&name, special_file("a sparse file"))),
            other => {
                return Err(refuse(
                    &name,
                    special_file(&format!(
                        "of tar entry type {:?}",
                        char::from(other.as_byte())
                    )),
                ));
            }
        }
    }
    if !extensions.is_empty() {
        return Err(Error::InvalidBundle(format!(
            "the extension header {} describes no entry: the archive ends after it",
            place(&last)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::bundle::Unpacked;
    use crate::bundle::test_support::*;

    #[test]
    fn tar_gz_bundle_unpacks_with_flags() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, data).unwrap();
        };
        add("main.py", b"def handler(event):\n    return event\n");
        add("requirements.txt", b"requests==2.32.3\n");
        add("wheels/tiny-1.0-py3-none-any.whl", b"PK fake wheel");
        add("lib/util.py", b"X = 1\n");
        let bundle = gz(&builder.into_inner().unwrap());

        let s = scratch();
        let unpacked = s.unpack(&bundle).unwrap();
        assert_eq!(
            unpacked,
            Unpacked {
                files: paths(&[
                    "lib/util.py",
                    "main.py",
                    "requirements.txt",
                    "wheels/tiny-1.0-py3-none-any.whl",
                ]),
                total_bytes: 37 + 17 + 13 + 6,
                has_requirements: true,
                has_wheels: true,
            }
        );
        assert_eq!(s.read("requirements.txt"), "requests==2.32.3\n");
        assert_eq!(s.mode("main.py"), 0o644);
        assert_eq!(s.mode("wheels"), 0o755);
    }

    #[test]
    fn plain_tar_without_extras_has_no_flags() {
        let s = scratch();
        let unpacked = s
            .unpack(&tar_of(&[
                dir("./"),
                file("./main.py", "x"),
                dir("./wheels/"),
                file("./wheels/README", "no wheels here"),
            ]))
            .unwrap();
        assert_eq!(unpacked.files, paths(&["main.py", "wheels/README"]));
        assert!(!unpacked.has_requirements);
        assert!(!unpacked.has_wheels);
    }

    #[test]
    fn long_names_via_gnu_and_pax_headers() {
        let deep = format!("{}/main.py", "d".repeat(150));
        let long = format!("{}/util.py", "p".repeat(200));
        let mut builder = tar::Builder::new(Vec::new());
        // A GNU header with a name over 100 bytes gets a `././@LongLink` entry first.
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &deep, b"deep".as_slice())
            .unwrap();
        // A global pax header like the one `git archive` writes.
        builder.get_mut().extend_from_slice(&tar_entries(&[Raw {
            name: b"pax_global_header".to_vec(),
            kind: b'g',
            link: vec![],
            mode: 0o666,
            data: pax_records(&[("comment", b"0123abcd")]),
        }]));
        // A pax `path` record overriding the header's name.
        builder
            .append_pax_extensions([("path", long.as_bytes())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("short-placeholder").unwrap();
        header.set_size(4);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, b"util".as_slice()).unwrap();

        let s = scratch();
        let unpacked = s.unpack(&builder.into_inner().unwrap()).unwrap();
        let mut expected = paths(&[&deep, &long]);
        expected.sort();
        assert_eq!(unpacked.files, expected);
        assert_eq!(s.read(&deep), "deep");
        assert_eq!(s.read(&long), "util");
    }

    #[test]
    fn global_pax_header_renaming_entries_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[
                Raw {
                    name: b"pax_global_header".to_vec(),
                    kind: b'g',
                    link: vec![],
                    mode: 0o666,
                    data: pax_records(&[("path", b"../x")]),
                },
                file("main.py", ""),
            ])),
            &["global pax header", "`path`"],
        );
    }

    #[test]
    fn pax_size_disagreeing_with_header_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", b"4096".as_slice())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("main.py").unwrap();
        header.set_size(4);
        header.set_cksum();
        builder.append(&header, b"code".as_slice()).unwrap();
        let s = scratch();
        s.refused(
            s.unpack(&builder.into_inner().unwrap()),
            &["main.py", "pax size"],
        );
    }

    #[test]
    fn huge_extension_header_refused() {
        let mut out = Vec::new();
        let header = raw_header(b"././@LongLink", b'L', b"", 0o644, 1 << 30);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&[0; 4096]);
        let s = scratch();
        s.refused(s.unpack(&out), &["extension header", "1073741824 bytes"]);
    }

    // ---- special files ----------------------------------------------------------

    #[test]
    fn character_device_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("main.py", ""), special("null", b'3')])),
            &["\"null\"", "character device"],
        );
    }

    #[test]
    fn block_device_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[special("sda", b'4')])),
            &["\"sda\"", "block device"],
        );
    }

    #[test]
    fn fifo_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[file("main.py", ""), special("pipe", b'6')])),
            &["\"pipe\"", "FIFO"],
        );
    }

    #[test]
    fn unknown_tar_type_refused() {
        let s = scratch();
        s.refused(
            s.unpack(&tar_of(&[special("volume", b'V')])),
            &["\"volume\"", "'V'"],
        );
    }

    #[test]
    fn truncated_tar_refused() {
        let mut tar = tar_of(&[file("main.py", &"x".repeat(2000))]);
        tar.truncate(512 + 1000);
        let s = scratch();
        s.refused(s.unpack(&tar), &["main.py"]);
    }
}
