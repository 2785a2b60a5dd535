//! hello: the smallest useful newt function.
//!
//! Input `{"name": "x"}` (the name, and the whole body, may be left out); output
//! `{"greeting": "Hello, x!"}`.

use std::convert::Infallible;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, PartialEq, Serialize)]
struct Output {
    greeting: String,
}

fn handler(input: Option<Input>) -> Result<Output, Infallible> {
    let name = input.unwrap_or_default().name;
    let name = name.as_deref().unwrap_or("world");
    Ok(Output {
        greeting: format!("Hello, {name}!"),
    })
}

fn main() {
    newt_sdk::run(handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(input: Option<Input>) -> String {
        handler(input).unwrap().greeting
    }

    #[test]
    fn greets_by_name() {
        let input = Input {
            name: Some("x".to_string()),
        };
        assert_eq!(greeting(Some(input)), "Hello, x!");
    }

    #[test]
    fn defaults_to_world() {
        assert_eq!(greeting(None), "Hello, world!");
        assert_eq!(greeting(Some(Input::default())), "Hello, world!");
    }
}
