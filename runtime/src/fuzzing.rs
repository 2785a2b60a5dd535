//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default):
//! thin public wrappers over what the crate keeps private (the agent frame protocol),
//! so the fuzz targets run newt's own decoder. Not part of the API.

use std::collections::HashMap;

use crate::docker::protocol;

/// Why a frame was refused ([`protocol::ProtocolError`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced more bytes than allowed.
    TooLarge {
        /// The announced length.
        len: usize,
        /// The bound in force.
        max: usize,
    },
    /// A complete frame was not a message the host knows.
    BadMessage(String),
}

impl From<protocol::ProtocolError> for FrameError {
    fn from(e: protocol::ProtocolError) -> Self {
        match e {
            protocol::ProtocolError::TooLarge { len, max } => FrameError::TooLarge { len, max },
            protocol::ProtocolError::BadMessage(m) => FrameError::BadMessage(m),
        }
    }
}

/// The host's decoder of the agent's frames (`docker::protocol::FrameReader`).
#[derive(Debug)]
pub struct FrameReader(protocol::FrameReader);

impl FrameReader {
    /// A reader refusing frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameReader(protocol::FrameReader::new(max_frame))
    }

    /// Changes the bound for frames not checked yet.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.0.set_max_frame(max_frame);
    }

    /// Adds a chunk of the agent's stdout.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), FrameError> {
        self.0.push(chunk).map_err(FrameError::from)
    }

    /// The next complete message, in its `Debug` form.
    pub fn next_message(&mut self) -> Result<Option<String>, FrameError> {
        self.0
            .next_message()
            .map(|m| m.map(|m| format!("{m:?}")))
            .map_err(FrameError::from)
    }

    /// Bytes the reader holds, waiting to complete a frame.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }
}

/// Decodes one frame's body the way [`FrameReader::next_message`] does, in the same
/// `Debug` form.
pub fn decode_agent_message(body: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<protocol::AgentMessage>(body)
        .map(|m| format!("{m:?}"))
        .map_err(|e| e.to_string())
}

/// An owned host → agent message (`docker::protocol::HostMessage` borrows).
#[derive(Clone, Debug)]
pub enum HostFrame {
    /// `ping`.
    Ping,
    /// `init`.
    Init {
        /// The function's name.
        function: String,
        /// `module:function`.
        handler: String,
        /// The working directory.
        workdir: String,
        /// The environment.
        env: HashMap<String, String>,
        /// Log bytes kept.
        max_log_bytes: u64,
        /// Output bytes allowed.
        max_output_bytes: u64,
        /// The largest reply frame.
        max_frame_bytes: u64,
        /// A runtime-level instance's code.
        bundle: Option<String>,
    },
    /// `run`.
    Run {
        /// The call's id.
        id: String,
        /// The input as text.
        input: String,
        /// The input's exact bytes, base64.
        input_b64: Option<String>,
        /// The deadline.
        deadline_ms: Option<i64>,
    },
}

impl HostFrame {
    fn message(&self) -> protocol::HostMessage<'_> {
        match self {
            HostFrame::Ping => protocol::HostMessage::Ping,
            HostFrame::Init {
                function,
                handler,
                workdir,
                env,
                max_log_bytes,
                max_output_bytes,
                max_frame_bytes,
                bundle,
            } => protocol::HostMessage::Init {
                function,
                handler,
                workdir,
                env: env.clone(),
                max_log_bytes: *max_log_bytes,
                max_output_bytes: *max_output_bytes,
                max_frame_bytes: *max_frame_bytes,
                bundle: bundle.as_deref(),
                egress_socket: None,
            },
            HostFrame::Run {
                id,
                input,
                input_b64,
                deadline_ms,
            } => protocol::HostMessage::Run {
                id,
                input,
                input_b64: input_b64.as_deref(),
                deadline_ms: *deadline_ms,
            },
        }
    }

    /// The frame the host sends (`docker::protocol::encode`).
    pub fn encode(&self) -> Vec<u8> {
        protocol::encode(&self.message())
    }

    /// The message's `type`.
    pub fn kind(&self) -> &'static str {
        self.message().kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &[u8]) -> Vec<u8> {
        let mut f = (json.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(json);
        f
    }

    #[test]
    fn buffered_counts_escaped_bytes() {
        let mut reader = FrameReader::new(1024);
        assert_eq!(reader.buffered(), 0);
        // A prefix of 0x00000040, then bytes that Debug escapes every way it can.
        reader.push(&[0, 0, 0, 64]).unwrap();
        reader.push(b"\n\r\t\\\"\0\x7f\xffab").unwrap();
        assert_eq!(reader.buffered(), 14);
        reader.push(&[b'x'; 54]).unwrap();
        assert!(matches!(
            reader.next_message(),
            Err(FrameError::BadMessage(_))
        ));
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn wrappers_decode_and_encode() {
        let mut reader = FrameReader::new(64);
        reader.push(&frame(br#"{"type":"pong"}"#)).unwrap();
        assert_eq!(reader.next_message(), Ok(Some("Pong".into())));
        assert_eq!(reader.next_message(), Ok(None));
        assert_eq!(
            decode_agent_message(br#"{"type":"pong"}"#),
            Ok("Pong".into())
        );
        assert_eq!(
            reader.push(&frame(&[b' '; 65])),
            Err(FrameError::TooLarge { len: 65, max: 64 })
        );
        assert_eq!(reader.buffered(), 0);
        let ping = HostFrame::Ping;
        assert_eq!(ping.kind(), "ping");
        assert_eq!(&ping.encode()[4..], br#"{"type":"ping"}"#);
    }
}
