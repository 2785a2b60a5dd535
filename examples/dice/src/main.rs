//! dice: rolls dice written in the usual `NdM` notation.
//!
//! Input `{"roll": "4d6"}`; output a JSON list of the four results, each 1 to 6.
//! A roll that is not `NdM` with N 1-100 and M 2-1000 is a function error.
//!
//! Over HTTP (`newt route add /api/dice dice`, or `/fn/dice`): `GET /api/dice/4d6` or
//! `GET /api/dice?roll=4d6` answers 200 with the list; a bad roll answers 400
//! `{"error": ...}`, a method other than GET 405.

use std::fmt;

use newt_sdk::http::{Request, Response};
use rand::rngs::{SmallRng, SysRng};
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Most dice in one roll: keeps the output small whatever the input.
const MAX_DICE: u32 = 100;
/// Fewest sides a die may have: a one-sided die always shows 1.
const MIN_SIDES: u32 = 2;
/// Most sides a die may have.
const MAX_SIDES: u32 = 1000;

#[derive(Debug, Deserialize)]
struct Input {
    roll: String,
}

/// A parsed `NdM` roll: `dice` dice of `sides` sides each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Roll {
    dice: u32,
    sides: u32,
}

impl fmt::Display for Roll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}d{}", self.dice, self.sides)
    }
}

/// Parses `NdM` (the `d` may be upper case) with N in 1..=100 and M in 2..=1000.
fn parse_roll(text: &str) -> Result<Roll, String> {
    let invalid = || {
        format!(
            "invalid roll {text:?}: expected NdM like 4d6 (N 1-{MAX_DICE}, M {MIN_SIDES}-{MAX_SIDES})"
        )
    };
    let (dice, sides) = text.split_once(['d', 'D']).ok_or_else(invalid)?;
    let roll = Roll {
        dice: parse_count(dice).ok_or_else(invalid)?,
        sides: parse_count(sides).ok_or_else(invalid)?,
    };
    if !(1..=MAX_DICE).contains(&roll.dice) || !(MIN_SIDES..=MAX_SIDES).contains(&roll.sides) {
        return Err(invalid());
    }
    Ok(roll)
}

/// Parses plain decimal digits; `u32::from_str` alone would also accept a leading `+`.
fn parse_count(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn roll_dice(roll: Roll, rng: &mut impl RngExt) -> Vec<u32> {
    (0..roll.dice)
        .map(|_| rng.random_range(1..=roll.sides))
        .collect()
}

fn handler(input: Input) -> Result<Vec<u32>, String> {
    let roll = parse_roll(&input.roll)?;
    eprintln!("rolling {roll}");
    // Seeded from the host's entropy (WASI `random_get`) on every call: a fresh
    // instance runs each call, so there is no state to carry a generator in.
    let mut rng = SmallRng::try_from_rng(&mut SysRng)
        .map_err(|e| format!("could not get random bytes from the host: {e}"))?;
    Ok(roll_dice(roll, &mut rng))
}

/// The HTTP face of [`handler`]: the roll from the path (`/4d6`) or `?roll=`.
fn http_handler(request: Request) -> Response {
    if request.method != "GET" {
        return Response::new(405)
            .header("allow", "GET")
            .header("content-type", "application/json")
            .body(r#"{"error":"use GET, e.g. GET /api/dice/4d6"}"#);
    }
    let from_path = request.path.trim_matches('/');
    let roll = match (from_path.is_empty(), request.query_param("roll")) {
        (false, _) => from_path.to_string(),
        (true, Some(roll)) => roll,
        (true, None) => String::new(),
    };
    let answer = match handler(Input { roll }) {
        Ok(results) => Response::json(200, &results),
        Err(error) => Response::json(400, &ErrorBody { error }),
    };
    // A list of numbers or a string always serializes.
    answer.unwrap_or_else(|e| Response::new(500).body(e.to_string()))
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn main() {
    newt_sdk::http::serve_or_run(http_handler, handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roll(dice: u32, sides: u32) -> Roll {
        Roll { dice, sides }
    }

    #[test]
    fn parses_valid_rolls() {
        assert_eq!(parse_roll("4d6"), Ok(roll(4, 6)));
        assert_eq!(parse_roll("1d2"), Ok(roll(1, 2)));
        assert_eq!(parse_roll("100d1000"), Ok(roll(100, 1000)));
        assert_eq!(parse_roll("2D20"), Ok(roll(2, 20)));
        assert_eq!(parse_roll("03d06"), Ok(roll(3, 6)));
    }

    #[test]
    fn rejects_malformed_rolls() {
        for text in [
            "",
            "x",
            "d6",
            "4d",
            "4",
            "4x6",
            "4d6d6",
            "+4d6",
            "4d+6",
            "-1d6",
            " 4d6",
            "4d6 ",
            "4.5d6",
            "1e2d6",
            "99999999999d6",
        ] {
            assert!(parse_roll(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn rejects_out_of_range_rolls() {
        for text in ["0d6", "101d6", "4d0", "4d1", "4d1001"] {
            assert!(parse_roll(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn error_names_the_value_and_the_expected_form() {
        assert_eq!(
            parse_roll("x").unwrap_err(),
            r#"invalid roll "x": expected NdM like 4d6 (N 1-100, M 2-1000)"#
        );
    }

    #[test]
    fn rolls_are_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        let results = roll_dice(roll(100, 6), &mut rng);
        assert_eq!(results.len(), 100);
        assert!(results.iter().all(|n| (1..=6).contains(n)), "{results:?}");
        // 100 rolls of a d6 show more than one face.
        assert!(results.iter().any(|&n| n != results[0]));
    }

    #[test]
    fn handler_rejects_a_bad_roll() {
        let error = handler(Input {
            roll: "lots".to_string(),
        })
        .unwrap_err();
        assert!(error.starts_with(r#"invalid roll "lots""#), "{error}");
    }

    fn get(path: &str, query: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            ..Request::default()
        }
    }

    fn envelope(response: Response) -> serde_json::Value {
        serde_json::from_slice(&response.to_envelope()).unwrap()
    }

    #[test]
    fn over_http_the_roll_comes_from_the_path_or_the_query() {
        for request in [get("/3d6", ""), get("/", "roll=3d6")] {
            let answer = envelope(http_handler(request));
            assert_eq!(answer["statusCode"], 200);
            let results: Vec<u32> = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
            assert_eq!(results.len(), 3);
        }
        let bad = envelope(http_handler(get("/lots", "")));
        assert_eq!(bad["statusCode"], 400);
        assert!(bad["body"].as_str().unwrap().contains("invalid roll"));
        let post = Request {
            method: "POST".into(),
            ..get("/4d6", "")
        };
        assert_eq!(envelope(http_handler(post))["statusCode"], 405);
    }

    #[test]
    fn handler_rolls() {
        let results = handler(Input {
            roll: "4d6".to_string(),
        })
        .unwrap();
        assert_eq!(results.len(), 4);
        assert!(results.iter().all(|n| (1..=6).contains(n)), "{results:?}");
    }
}
