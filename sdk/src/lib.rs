//! Write newt functions in Rust.
//!
//! A newt function compiled to `wasm32-wasip1` is a WASI command: the host writes the
//! call's input to its stdin, reads the output from its stdout, keeps what it writes to
//! stderr as the call's logs, and treats a non-zero exit code as a function error whose
//! message is the tail of stderr. This crate does that plumbing so a function is one
//! handler:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     name: Option<String>,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     greeting: String,
//! }
//!
//! fn main() {
//!     newt_sdk::run(|input: Option<Input>| {
//!         let name = input.and_then(|i| i.name).unwrap_or_else(|| "world".into());
//!         eprintln!("greeting {name}"); // stderr becomes the call's logs
//!         Ok::<_, String>(Output { greeting: format!("Hello, {name}!") })
//!     })
//! }
//! ```
//!
//! Build it with `newt build` (or `cargo build --release --target wasm32-wasip1`).
//!
//! Exit codes, which the host reports with the call:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: stdout holds the output |
//! | 1 | the handler returned an error (its message is the last line of stderr), or the output could not be written |
//! | 2 | the input could not be read or is not valid for the handler's input type |
//!
//! Functions called over HTTP (`/fn/NAME/...` or a route) can take the request and set
//! the status, headers and body with [`http::serve`].
//!
//! The crate also builds natively, so handlers can be unit-tested with `cargo test`.

pub mod http;

use std::fmt::Display;
use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit code for a successful call.
const EXIT_OK: i32 = 0;
/// Exit code for an error returned by the handler (or output that could not be written).
const EXIT_FUNCTION_ERROR: i32 = 1;
/// Exit code for input that could not be read or parsed.
const EXIT_INVALID_INPUT: i32 = 2;

/// Runs a JSON function: reads all of stdin, parses it as JSON into `I`, calls `handler`,
/// writes its result to stdout as JSON and exits.
///
/// Empty input (or input that is only whitespace) is parsed as JSON `null`, so a handler
/// taking `Option<T>` or `()` can be called without a body.
///
/// On a handler error its message is printed to stderr and the process exits with code 1.
/// On input that does not parse into `I`, `invalid input: <reason>` is printed to stderr
/// and the process exits with code 2. Never returns.
pub fn run<I, O, E, F>(handler: F) -> !
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    let result = read_stdin().and_then(|input| handle_json(&input, handler));
    finish(result)
}

/// Runs a raw-bytes function: reads all of stdin, passes the bytes to `handler` and writes
/// the bytes it returns to stdout.
///
/// On a handler error its message is printed to stderr and the process exits with code 1.
/// Never returns.
pub fn run_bytes<E, F>(handler: F) -> !
where
    E: Display,
    F: FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
{
    let result = read_stdin().and_then(|input| handle_bytes(input, handler));
    finish(result)
}

/// What the host tells a function about the call it is running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    function: String,
    call_id: String,
}

impl Context {
    /// The name of the function being called (`NEWT_FUNCTION`); empty when not run by newt.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The id of this call (`NEWT_CALL_ID`), as shown by `newt call ID`; empty when not run
    /// by newt.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }
}

/// Returns the [`Context`] of the current call, read from the environment the host sets.
pub fn context() -> Context {
    Context {
        function: std::env::var("NEWT_FUNCTION").unwrap_or_default(),
        call_id: std::env::var("NEWT_CALL_ID").unwrap_or_default(),
    }
}

/// Why a call did not produce an output; decides the message and the exit code.
#[derive(Debug)]
enum Failure {
    /// Stdin could not be read.
    ReadInput(std::io::Error),
    /// The input is not JSON of the handler's input type.
    InvalidInput(serde_json::Error),
    /// The handler returned an error; the message is its `Display`.
    Handler(String),
    /// The handler's output could not be serialized as JSON.
    SerializeOutput(serde_json::Error),
    /// The input is not the HTTP request envelope an [`http::serve`] function needs.
    InvalidRequest(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::ReadInput(_) | Failure::InvalidInput(_) | Failure::InvalidRequest(_) => {
                EXIT_INVALID_INPUT
            }
            Failure::Handler(_) | Failure::SerializeOutput(_) => EXIT_FUNCTION_ERROR,
        }
    }
}

impl Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ReadInput(e) => write!(f, "could not read input: {e}"),
            Failure::InvalidInput(e) => write!(f, "invalid input: {e}"),
            Failure::Handler(message) => f.write_str(message),
            Failure::SerializeOutput(e) => write!(f, "could not serialize output: {e}"),
            Failure::InvalidRequest(why) => write!(f, "invalid input: {why}"),
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(Failure::ReadInput)?;
    Ok(input)
}

/// The pure part of [`run`]: input bytes to output bytes, with no I/O.
fn handle_json<I, O, E, F>(input: &[u8], handler: F) -> Result<Vec<u8>, Failure>
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    // An empty body means "no input": parse it as `null` rather than failing with
    // "EOF while parsing", so `Option<T>` and `()` handlers work without a body.
    let input = if input.iter().all(u8::is_ascii_whitespace) {
        b"null".as_slice()
    } else {
        input
    };
    let input: I = serde_json::from_slice(input).map_err(Failure::InvalidInput)?;
    let output = handler(input).map_err(|e| Failure::Handler(e.to_string()))?;
    serde_json::to_vec(&output).map_err(Failure::SerializeOutput)
}

/// The pure part of [`run_bytes`].
fn handle_bytes<E, F>(input: Vec<u8>, handler: F) -> Result<Vec<u8>, Failure>
where
    E: Display,
    F: FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
{
    handler(input).map_err(|e| Failure::Handler(e.to_string()))
}

/// Writes the output or the failure, flushes, and exits with the matching code.
fn finish(result: Result<Vec<u8>, Failure>) -> ! {
    let code = match result {
        Ok(output) => {
            // `process::exit` runs no destructors, so flush stdout ourselves.
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&output).and_then(|()| stdout.flush()) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("could not write output: {e}");
                    EXIT_FUNCTION_ERROR
                }
            }
        }
        Err(failure) => {
            // The host reports the tail of stderr as the error: end with the message.
            eprintln!("{failure}");
            failure.exit_code()
        }
    };
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Greeting {
        name: String,
    }

    fn greet(input: Greeting) -> Result<Greeting, String> {
        if input.name.is_empty() {
            return Err("name must not be empty".to_string());
        }
        Ok(Greeting {
            name: format!("Hello, {}!", input.name),
        })
    }

    #[test]
    fn json_round_trip() {
        let output = handle_json(br#"{"name":"newt"}"#, greet).unwrap();
        assert_eq!(output, br#"{"name":"Hello, newt!"}"#);
    }

    #[test]
    fn handler_error_is_exit_1_with_its_message() {
        let failure = handle_json(br#"{"name":""}"#, greet).unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        assert_eq!(failure.to_string(), "name must not be empty");
    }

    #[test]
    fn invalid_json_is_exit_2() {
        let failure = handle_json(b"{not json", greet).unwrap_err();
        assert_eq!(failure.exit_code(), 2);
        assert!(
            failure.to_string().starts_with("invalid input: "),
            "{failure}"
        );
    }

    #[test]
    fn wrong_shape_is_exit_2_naming_the_field() {
        let failure = handle_json(br#"{"nom":"x"}"#, greet).unwrap_err();
        assert_eq!(failure.exit_code(), 2);
        assert!(
            failure.to_string().contains("missing field `name`"),
            "{failure}"
        );
    }

    #[test]
    fn empty_input_is_null() {
        let handler = |input: Option<Greeting>| Ok::<_, String>(input.is_none());
        assert_eq!(handle_json(b"", handler).unwrap(), b"true");
        assert_eq!(handle_json(b" \n", handler).unwrap(), b"true");
        assert_eq!(handle_json(b"null", handler).unwrap(), b"true");
        assert_eq!(handle_json(br#"{"name":"x"}"#, handler).unwrap(), b"false");

        let unit = |(): ()| Ok::<_, String>("ok");
        assert_eq!(handle_json(b"", unit).unwrap(), br#""ok""#);
    }

    #[test]
    fn empty_input_for_a_required_struct_is_invalid() {
        let failure = handle_json(b"", greet).unwrap_err();
        assert_eq!(failure.exit_code(), 2);
    }

    #[test]
    fn output_that_is_not_json_is_a_function_error() {
        use std::collections::HashMap;
        // JSON object keys must be strings: a map keyed by a tuple cannot be serialized.
        let handler = |(): ()| Ok::<_, String>(HashMap::from([((1, 2), 3)]));
        let failure = handle_json(b"", handler).unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        assert!(
            failure
                .to_string()
                .starts_with("could not serialize output: "),
            "{failure}"
        );
    }

    #[test]
    fn bytes_pass_through() {
        let upper = |input: Vec<u8>| Ok::<_, String>(input.to_ascii_uppercase());
        assert_eq!(handle_bytes(b"abc".to_vec(), upper).unwrap(), b"ABC");

        let failing = |_: Vec<u8>| Err::<Vec<u8>, _>("too short");
        let failure = handle_bytes(Vec::new(), failing).unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        assert_eq!(failure.to_string(), "too short");
    }

    #[test]
    fn context_reads_the_environment_names() {
        // Not set under `cargo test`: both are empty rather than an error.
        let context = context();
        assert_eq!(
            context.function(),
            std::env::var("NEWT_FUNCTION").unwrap_or_default()
        );
        assert_eq!(
            context.call_id(),
            std::env::var("NEWT_CALL_ID").unwrap_or_default()
        );
    }
}
