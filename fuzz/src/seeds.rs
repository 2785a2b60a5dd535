//! Seed inputs for each target, made from newt's own fixtures: bundles packed by
//! `newt_runtime::pack` and the layouts the bundle tests use, the built-in Python
//! runtime's `runtime.toml`, the seed platform's request bodies.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;

const MAIN_PY: &[u8] = b"def handler(event):\n    return event\n";

/// The built-in runtime definition, as the runtime crate embeds it.
pub const PYTHON_RUNTIME_TOML: &str = include_str!("../../runtimes/python/runtime.toml");

/// A tar header for `name`, filled in by hand.
fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_path(name).expect("a short name");
    header.set_cksum();
    header
}

/// Uncompressed tars: the usual layout (a wrapping directory, a module folder, a
/// requirements file, an executable, links inside the bundle), a long name (GNU
/// extension) and a pax header.
pub fn tars() -> Vec<Vec<u8>> {
    let mut out = Vec::new();

    let mut b = tar::Builder::new(Vec::new());
    for (name, body, mode) in [
        ("fn/main.py", MAIN_PY, 0o644),
        (
            "fn/requirements.txt",
            b"requests==2.32.0\n".as_slice(),
            0o644,
        ),
        ("fn/lib/util.py", b"X = 1\n".as_slice(), 0o644),
        ("fn/run.sh", b"#!/bin/sh\n".as_slice(), 0o755),
    ] {
        b.append(
            &header(name, tar::EntryType::Regular, mode, body.len() as u64),
            body,
        )
        .unwrap();
    }
    b.append(
        &header("fn/data/", tar::EntryType::Directory, 0o755, 0),
        &[][..],
    )
    .unwrap();
    let mut link = header("fn/data/util.py", tar::EntryType::Symlink, 0o777, 0);
    link.set_link_name("../lib/util.py").unwrap();
    link.set_cksum();
    b.append(&link, &[][..]).unwrap();
    let mut hard = header("fn/again.py", tar::EntryType::Link, 0o644, 0);
    hard.set_link_name("fn/main.py").unwrap();
    hard.set_cksum();
    b.append(&hard, &[][..]).unwrap();
    out.push(b.into_inner().unwrap());

    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(
            "main.py",
            tar::EntryType::Regular,
            0o644,
            MAIN_PY.len() as u64,
        ),
        MAIN_PY,
    )
    .unwrap();
    let long = format!("{}/deep.py", "d".repeat(120));
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"x=1"[..]).unwrap();
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([("path", b"pax/name.py".as_slice())])
        .unwrap();
    pax.append(
        &header("ignored.py", tar::EntryType::Regular, 0o644, 2),
        &b"ok"[..],
    )
    .unwrap();
    out.push(b.into_inner().unwrap());
    out.push(pax.into_inner().unwrap());
    out
}

/// `.tar.gz` bundles: what `newt_runtime::pack` makes, and the tars above gzipped.
pub fn targz() -> Vec<Vec<u8>> {
    let mut out = vec![
        newt_runtime::pack(&[("main.py", MAIN_PY)]).unwrap(),
        newt_runtime::pack(&[
            ("main.py", MAIN_PY),
            ("requirements.txt", b"requests\n"),
            ("wheels/requests-2.32.0-py3-none-any.whl", b"PK\x05\x06"),
        ])
        .unwrap(),
    ];
    out.extend(tars().iter().map(|t| crate::gzip(t)));
    out
}

/// Zip bundles: stored and deflated entries, a directory, an executable, a symlink.
pub fn zips() -> Vec<Vec<u8>> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("main.py", stored).unwrap();
    w.write_all(MAIN_PY).unwrap();
    w.add_directory("lib/", stored).unwrap();
    w.start_file("lib/util.py", deflated).unwrap();
    w.write_all(&b"X = 1\n".repeat(20)).unwrap();
    w.start_file("run.sh", stored.unix_permissions(0o755))
        .unwrap();
    w.write_all(b"#!/bin/sh\n").unwrap();
    w.add_symlink("util.py", "lib/util.py", stored).unwrap();
    let full = w.finish().unwrap().into_inner();

    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("fn/main.py", deflated).unwrap();
    w.write_all(MAIN_PY).unwrap();
    let wrapped = w.finish().unwrap().into_inner();

    let empty = zip::ZipWriter::new(Cursor::new(Vec::new()))
        .finish()
        .unwrap()
        .into_inner();
    vec![full, wrapped, empty]
}

/// `agent_frames` reads its input through `arbitrary`; a few plain byte strings give it
/// frames to start from.
pub fn agent_frames() -> Vec<Vec<u8>> {
    let frame = |json: &str| {
        let mut f = (json.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f
    };
    vec![
        frame(r#"{"type":"pong"}"#),
        frame(r#"{"type":"ready","logs":"imported"}"#),
        frame(r#"{"type":"result","id":"c1","ok":true,"output":"[1]","logs":""}"#),
        frame(r#"{"type":"error","error":"ImportError","logs":"x"}"#),
    ]
}

/// Joins sections with NUL, the way `crate::sections` splits them.
fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&0u8)
}

/// `deploy_params`: query, x-newt-limits, x-newt-policy, a policy, a patch, a runtime
/// definition, a duration.
pub fn deploy_params() -> Vec<Vec<u8>> {
    let seed_runtime = br#"{"name":"py2","image":"newt/python:3","path":"/app","dependencies":"pip3 install -r requirements.txt","run":"python3 main.py"}"#;
    vec![
        joined(&[
            b"timeout_ms=500&preload=none&runtime=python",
            br#"{"memory_mb":256,"max_log_bytes":1024}"#,
            br#"{"min_warm":1,"keep_alive":"5m"}"#,
            br#"{"preload":"runtime","keep_alive":"500ms","max_instances":4}"#,
            br#"{"max_queue":3,"min_warm":2}"#,
            PYTHON_RUNTIME_TOML.as_bytes(),
            b"60s",
        ]),
        joined(&[
            b"max_instances=2&min_warm=1&max_queue=0&keep_alive=1h",
            b"",
            br#"{"preload":"function"}"#,
            br#"{"keep_alive":30}"#,
            br#"{"preload":"none"}"#,
            seed_runtime,
            b"1500ms",
        ]),
    ]
}

/// `seed_bodies`: the first byte picks the route (0 invokeFunction, 1 registerRuntime,
/// 2 registerFunction with a raw content type and body, 3 registerFunction with one
/// multipart field built from boundary, name, filename, content type and content).
pub fn seed_bodies() -> Vec<Vec<u8>> {
    let bundle = newt_runtime::pack(&[("main.py", MAIN_PY)]).unwrap();
    let mut out = vec![
        [&[0u8][..], br#"{"funcName":"dice","params":{"sides":6}}"#].concat(),
        [&[0u8][..], br#"{"funcName":"f","params":[1,"two",null,{"x":1.5e3}]}"#].concat(),
        [
            &[1u8][..],
            br#"{"name":"py2","image":"newt/python:3","path":"/app","dependencies":"pip3 install -r requirements.txt","run":"python3 main.py"}"#,
        ]
        .concat(),
        [
            &[1u8][..],
            br#"{"name":"agent","image":"newt/python:3","run":"python3 /opt/newt/agent.py","mode":"agent","policy":{"preload":"runtime","min_warm":1}}"#,
        ]
        .concat(),
        [
            &[2u8][..],
            &joined(&[
                b"multipart/form-data; boundary=XyZ",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"module\"; filename=\"b.zip\"\r\n\r\nPK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\r\n--XyZ--\r\n",
            ]),
        ]
        .concat(),
    ];
    out.push(
        [
            &[3u8][..],
            &joined(&[
                b"----newt",
                b"module",
                b"bundle.tar.gz",
                b"application/gzip",
                &bundle,
            ]),
        ]
        .concat(),
    );
    out
}

/// `names`: function names, runtime names, call ids (UUIDs in every spelling
/// `Uuid::parse_str` takes) and call numbers.
pub fn names() -> Vec<Vec<u8>> {
    [
        "dice",
        "hello-2",
        "python",
        "wasm",
        "-a",
        "0189c7d6-7a5e-7cc0-8000-0000000000ab",
        "0189C7D67A5E7CC080000000000000AB",
        "{0189c7d6-7a5e-7cc0-8000-0000000000ab}",
        "urn:uuid:0189c7d6-7a5e-7cc0-8000-0000000000ab",
        "42",
        "-9223372036854775808",
        "+7",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
