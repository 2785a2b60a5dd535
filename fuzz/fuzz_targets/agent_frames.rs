//! The agent frame protocol, both directions.
//!
//! Agent → host: a script of operations read from the input (push a chunk of raw bytes,
//! push a well-formed frame or a templated message, change the bound, take messages)
//! drives newt's `FrameReader` beside a model of what it must do. The reader must never
//! panic, must refuse a frame exactly when its length prefix exceeds the bound in force
//! when the prefix arrived (and stay refused, holding nothing), must hand out the same
//! frames as the model, must hold exactly the bytes not yet handed out, and once drained
//! must hold less than one frame's prefix and bound.
//!
//! Host → agent: messages built from the input are encoded; the prefix must be the body's
//! length, the body JSON with the message's type and fields, and the frame must pass a
//! reader bounded at its size and be refused by one a byte smaller.
#![no_main]

use std::collections::{HashMap, VecDeque};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use newt_runtime::fuzzing::{FrameError, FrameReader, HostFrame, decode_agent_message};
use serde_json::{Value, json};

/// Largest bound tried: small, so oversized frames are easy to announce.
const MAX_BOUND: usize = 300;

/// What the reader must do, written plainly.
struct Model {
    /// Bytes received and not yet handed out as a frame.
    held: VecDeque<u8>,
    /// Offset in `held` of the first length prefix not checked yet.
    unchecked: usize,
    max: usize,
    broken: Option<(usize, usize)>,
}

impl Model {
    fn push(&mut self, chunk: &[u8]) -> std::result::Result<(), FrameError> {
        if let Some((len, max)) = self.broken {
            return Err(FrameError::TooLarge { len, max });
        }
        self.held.extend(chunk);
        while self.held.len() >= self.unchecked + 4 {
            let prefix: Vec<u8> = self
                .held
                .range(self.unchecked..self.unchecked + 4)
                .copied()
                .collect();
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if len > self.max {
                self.held.clear();
                self.broken = Some((len, self.max));
                return Err(FrameError::TooLarge { len, max: self.max });
            }
            self.unchecked += 4 + len;
        }
        Ok(())
    }

    fn next(&mut self) -> std::result::Result<Option<String>, FrameError> {
        if let Some((len, max)) = self.broken {
            return Err(FrameError::TooLarge { len, max });
        }
        if self.held.len() < 4 {
            return Ok(None);
        }
        let prefix: Vec<u8> = self.held.range(..4).copied().collect();
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if self.held.len() < 4 + len {
            return Ok(None);
        }
        let body: Vec<u8> = self.held.drain(..4 + len).skip(4).collect();
        self.unchecked -= 4 + len;
        decode_agent_message(&body)
            .map(Some)
            .map_err(FrameError::BadMessage)
    }
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(0..=24)?;
    let bytes = u.bytes(len)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A message the agent could send, from a template.
fn agent_message(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let value = match u.int_in_range(0..=4)? {
        0 => json!({"type": "pong"}),
        1 => json!({"type": "ready", "logs": text(u)?}),
        2 => json!({"type": "error", "error": text(u)?, "logs": text(u)?}),
        3 => json!({
            "type": "result",
            "id": text(u)?,
            "ok": u.arbitrary::<bool>()?,
            "output": if u.arbitrary()? { Value::String(text(u)?) } else { Value::Null },
            "error": if u.arbitrary()? { Value::String(text(u)?) } else { Value::Null },
            "logs": text(u)?,
        }),
        _ => json!({"type": text(u)?, "extra": u.arbitrary::<i64>()?}),
    };
    Ok(serde_json::to_vec(&value).unwrap())
}

fn host_frame(u: &mut Unstructured<'_>) -> Result<HostFrame> {
    Ok(match u.int_in_range(0..=2)? {
        0 => HostFrame::Ping,
        1 => {
            let mut env = HashMap::new();
            for _ in 0..u.int_in_range(0..=3)? {
                env.insert(text(u)?, text(u)?);
            }
            HostFrame::Init {
                function: text(u)?,
                handler: text(u)?,
                workdir: text(u)?,
                env,
                max_log_bytes: u.arbitrary()?,
                max_output_bytes: u.arbitrary()?,
                max_frame_bytes: u.arbitrary()?,
                bundle: if u.arbitrary()? { Some(text(u)?) } else { None },
            }
        }
        _ => HostFrame::Run {
            id: text(u)?,
            input: text(u)?,
            input_b64: if u.arbitrary()? { Some(text(u)?) } else { None },
            deadline_ms: u.arbitrary()?,
        },
    })
}

fn check_host_frame(message: &HostFrame) {
    let frame = message.encode();
    assert!(frame.len() >= 4);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4, "the prefix is not the body's length");
    let v: Value = serde_json::from_slice(&frame[4..]).expect("the body is JSON");
    assert_eq!(v["type"], message.kind());
    match message {
        HostFrame::Ping => assert_eq!(v, json!({"type": "ping"})),
        HostFrame::Init {
            function,
            handler,
            workdir,
            env,
            max_log_bytes,
            max_output_bytes,
            max_frame_bytes,
            bundle,
        } => {
            assert_eq!(v["function"], json!(function));
            assert_eq!(v["handler"], json!(handler));
            assert_eq!(v["workdir"], json!(workdir));
            assert_eq!(v["env"], json!(env));
            assert_eq!(v["max_log_bytes"], json!(max_log_bytes));
            assert_eq!(v["max_output_bytes"], json!(max_output_bytes));
            assert_eq!(v["max_frame_bytes"], json!(max_frame_bytes));
            assert_eq!(v.get("bundle"), bundle.as_ref().map(|b| json!(b)).as_ref());
        }
        HostFrame::Run {
            id,
            input,
            input_b64,
            deadline_ms,
        } => {
            assert_eq!(v["id"], json!(id));
            assert_eq!(v["input"], json!(input));
            assert_eq!(
                v.get("input_b64"),
                input_b64.as_ref().map(|b| json!(b)).as_ref()
            );
            assert_eq!(v["deadline_ms"], json!(deadline_ms));
        }
    }
    // The host's frames are not agent messages, but they frame the same way.
    let mut reader = FrameReader::new(len);
    reader
        .push(&frame)
        .expect("a frame at the bound is accepted");
    assert!(matches!(
        reader.next_message(),
        Err(FrameError::BadMessage(_))
    ));
    assert_eq!(reader.buffered(), 0);
    let mut reader = FrameReader::new(len - 1);
    assert_eq!(
        reader.push(&frame[..4]),
        Err(FrameError::TooLarge { len, max: len - 1 })
    );
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let max = u.int_in_range(0..=MAX_BOUND)?;
    let mut reader = FrameReader::new(max);
    let mut model = Model {
        held: VecDeque::new(),
        unchecked: 0,
        max,
        broken: None,
    };
    let mut largest_bound = max;
    while !u.is_empty() {
        let chunk: Vec<u8> = match u.int_in_range(0..=6)? {
            0 => {
                let len = u.int_in_range(0..=64)?;
                u.bytes(len)?.to_vec()
            }
            1 => {
                let len = u.int_in_range(0..=64)?;
                frame(u.bytes(len)?)
            }
            2 => frame(&agent_message(&mut u)?),
            3 => {
                // Part of a templated frame: the rest comes with later chunks.
                let f = frame(&agent_message(&mut u)?);
                let cut = u.int_in_range(0..=f.len())?;
                f[..cut].to_vec()
            }
            4 => {
                let max = u.int_in_range(0..=MAX_BOUND)?;
                reader.set_max_frame(max);
                model.max = max;
                largest_bound = largest_bound.max(max);
                continue;
            }
            5 => {
                assert_eq!(reader.next_message(), model.next());
                assert_eq!(reader.buffered(), model.held.len());
                continue;
            }
            _ => {
                check_host_frame(&host_frame(&mut u)?);
                continue;
            }
        };
        assert_eq!(reader.push(&chunk), model.push(&chunk));
        assert_eq!(reader.buffered(), model.held.len());
    }
    // Drain (past unreadable frames too): what is left is less than one frame.
    loop {
        let (got, want) = (reader.next_message(), model.next());
        assert_eq!(got, want);
        assert_eq!(reader.buffered(), model.held.len());
        if !matches!(got, Ok(Some(_)) | Err(FrameError::BadMessage(_))) {
            break;
        }
    }
    if model.broken.is_some() {
        assert_eq!(reader.buffered(), 0, "a refused stream is still buffered");
    } else {
        assert!(
            reader.buffered() < 4 + largest_bound,
            "{} bytes held after draining, bound {largest_bound}",
            reader.buffered()
        );
    }
    Ok(())
}

fuzz_target!(
    init: newt_fuzz::write_seeds(&newt_fuzz::seeds::agent_frames()),
    |data: &[u8]| {
        let _ = run(data);
    }
);
