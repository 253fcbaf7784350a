//! The validations of this crate as JSON Schema patterns, for the API's
//! document: a value that matches its pattern is one its validation
//! takes, so a client generated from `/openapi.json` sends what the
//! server accepts. The name's pattern is its validation exactly; the
//! others are stricter only at the edges (numbers of at most 19 digits,
//! JSON written without escapes or surrounding spaces). Written in the regular-expression subset that
//! ECMA-262, Python and Rust's `regex` share.

use crate::{BuildOptions, MAX_NAME_CHARS, Phase};

/// What `str::trim` removes: Unicode's `White_Space`.
const SPACE: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// What `char::is_control` finds: Unicode's `Cc`.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";
/// What JSON allows between tokens.
const JSON_SPACE: &str = r"[ \t\n\r]*";

/// An application name as [`crate::validate_name`] takes it: 1 to 100
/// characters without control characters once trimmed.
pub fn name() -> String {
    let edge = format!("[^{CONTROL}{SPACE}]");
    let inner = format!("[^{CONTROL}]");
    let middle = MAX_NAME_CHARS - 2;
    format!("^[{SPACE}]*{edge}(?:{inner}{{0,{middle}}}{edge})?[{SPACE}]*$")
}

/// A semantic version as [`crate::parse_version`] takes it, without the
/// surrounding spaces it trims; numbers within 19 digits, so they fit a
/// `u64`.
pub fn version() -> String {
    let number = "(?:0|[1-9][0-9]{0,18})";
    let pre = "(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)";
    let build = "[0-9A-Za-z-]+";
    format!(r"^{number}\.{number}\.{number}(?:-{pre}(?:\.{pre})*)?(?:\+{build}(?:\.{build})*)?$")
}

/// The upload's `phases`: a JSON array of at least one phase name.
pub fn phases_json() -> String {
    let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    let phase = format!("\"(?:{})\"", names.join("|"));
    let s = JSON_SPACE;
    format!(r"^{s}\[{s}{phase}{s}(?:,{s}{phase}{s})*\]{s}$")
}

/// The upload's `options`: a JSON object naming each of
/// [`BuildOptions::NAMES`] at most once, each `true` or `false`.
pub fn options_json() -> String {
    let s = JSON_SPACE;
    let member = |name: &str| format!(r#""{name}"{s}:{s}(?:true|false){s}"#);
    let orders: Vec<String> = orderings(&BuildOptions::NAMES)
        .iter()
        .map(|order| {
            let members: Vec<String> = order.iter().map(|name| member(name)).collect();
            members.join(&format!(",{s}"))
        })
        .collect();
    format!(r"^{s}\{{{s}(?:{})?\}}{s}$", orders.join("|"))
}

/// Every order of every non-empty subset of `names`.
fn orderings<'a>(names: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut all = Vec::new();
    for (i, first) in names.iter().enumerate() {
        let rest: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| *n)
            .collect();
        all.push(vec![*first]);
        for tail in orderings(&rest) {
            all.push(std::iter::once(*first).chain(tail).collect());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Phases, parse_version, validate_name};
    use regex::Regex;

    fn agree(pattern: &str, accepts: impl Fn(&str) -> bool, samples: &[&str]) {
        let pattern = Regex::new(pattern).unwrap();
        for sample in samples {
            assert_eq!(
                pattern.is_match(sample),
                accepts(sample),
                "{sample:?}: the pattern and the validation disagree"
            );
        }
    }

    #[test]
    fn the_name_pattern_is_the_name_validation() {
        let long = "n".repeat(MAX_NAME_CHARS);
        let too_long = "n".repeat(MAX_NAME_CHARS + 1);
        let padded = format!("  {long}\t\n");
        let wide = "日".repeat(MAX_NAME_CHARS);
        let samples = [
            "",
            " ",
            "\t",
            "a",
            " a ",
            "edge auth",
            "a\nb",
            "\u{85}a",
            "a\u{7f}",
            "\u{3000}x\u{3000}",
            "\u{1c}a",
            &long,
            &too_long,
            &padded,
            &wide,
            "é",
            "a\u{200b}",
            "\u{a0}",
        ];
        agree(&name(), |s| validate_name(s).is_ok(), &samples);
    }

    #[test]
    fn the_version_pattern_is_the_version_validation() {
        let samples = [
            "1.2.3",
            "0.0.0",
            "1.0.0-beta.1",
            "1.0.0-0.3.7",
            "1.0.0-x-y-z.--",
            "1.0.0+20130313144700",
            "1.0.0-alpha+001",
            "1.0.0+0.build.1-rc.10000aaa-kk-0.1",
            "01.2.3",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "1.0.0-",
            "1.0.0-01",
            "1.0.0+",
            "1.0.0-a..b",
            "9999999999999999999.0.0",
            "",
            "1.0.0-00a",
            "1.0.0+01",
        ];
        agree(&version(), |s| parse_version(s).is_ok(), &samples);
    }

    #[test]
    fn the_phases_pattern_is_the_phases_validation() {
        let samples = [
            r#"["request_headers"]"#,
            r#" [ "log" , "request_body" ] "#,
            r#"["log","log"]"#,
            "[]",
            "",
            r#"["Log"]"#,
            r#"["log",]"#,
            r#"{"log": 1}"#,
            "null",
            r#"["response_headers","response_body"]"#,
        ];
        agree(&phases_json(), |s| Phases::parse_json(s).is_ok(), &samples);
    }

    #[test]
    fn the_options_pattern_is_the_options_validation() {
        let samples = [
            "{}",
            r#"{"optimize": false}"#,
            r#"{"preinit":true,"optimize":false,"precompile":true}"#,
            r#"{"optimize": false, "optimize": true}"#,
            r#"{"optimize": 0}"#,
            r#"{"other": true}"#,
            "null",
            "[]",
            "",
            r#" { "precompile" : false } "#,
            r#"{"optimize": false,}"#,
        ];
        agree(
            &options_json(),
            |s| BuildOptions::parse_json(s).is_ok(),
            &samples,
        );
    }
}
