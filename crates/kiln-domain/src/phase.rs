//! The HTTP phases a proxy-wasm filter declares it handles.

use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One phase of an HTTP stream a filter takes part in. Each one maps to the
/// proxy-wasm callback the module must export.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The request's headers (`proxy_on_request_headers`).
    RequestHeaders,
    /// The request's body (`proxy_on_request_body`).
    RequestBody,
    /// The response's headers (`proxy_on_response_headers`).
    ResponseHeaders,
    /// The response's body (`proxy_on_response_body`).
    ResponseBody,
    /// The end of the stream, once the response is done (`proxy_on_log`).
    Log,
}

impl Phase {
    /// Every phase, in the order a stream passes through them.
    pub const ALL: [Phase; 5] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::Log,
    ];

    /// Its name on the wire and in the store (`request_headers`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::Log => "log",
        }
    }

    /// The proxy-wasm ABI 0.2.x export that implements this phase.
    pub fn abi_export(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "proxy_on_request_headers",
            Phase::RequestBody => "proxy_on_request_body",
            Phase::ResponseHeaders => "proxy_on_response_headers",
            Phase::ResponseBody => "proxy_on_response_body",
            Phase::Log => "proxy_on_log",
        }
    }

    /// Parses the name [`Phase::as_str`] gives.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == raw)
            .ok_or_else(|| {
                ValidationError::new(format!(
                    "unknown phase {raw:?}; expected one of request_headers, request_body, response_headers, response_body, log"
                ))
            })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-empty, duplicate-free, ordered set of phases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Phases(Vec<Phase>);

impl Phases {
    /// The set of `phases`, sorted, duplicates dropped; refused when empty.
    pub fn new(mut phases: Vec<Phase>) -> Result<Self, ValidationError> {
        if phases.is_empty() {
            return Err(ValidationError::new("phases must name at least one phase"));
        }
        phases.sort();
        phases.dedup();
        Ok(Self(phases))
    }

    /// Parses the API form: a JSON array of phase names.
    pub fn parse_json(raw: &str) -> Result<Self, ValidationError> {
        let names: Vec<String> = serde_json::from_str(raw).map_err(|_| {
            ValidationError::new(
                "phases must be a JSON array of phase names, such as [\"request_headers\"]",
            )
        })?;
        Self::from_names(&names)
    }

    /// The set of the phases named as [`Phase::as_str`] names them.
    pub fn from_names(names: &[String]) -> Result<Self, ValidationError> {
        let phases = names
            .iter()
            .map(|n| Phase::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(phases)
    }

    /// The phases, in stream order.
    pub fn as_slice(&self) -> &[Phase] {
        &self.0
    }

    /// The stored form: a JSON array of names.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("phases always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_reject_unknown() {
        let p = Phases::parse_json(r#"["log","request_headers","log"]"#).unwrap();
        assert_eq!(p.as_slice(), &[Phase::RequestHeaders, Phase::Log]);
        assert_eq!(Phases::parse_json(&p.to_json()).unwrap(), p);
        assert!(Phases::parse_json(r#"["request_trailers"]"#).is_err());
        assert!(Phases::parse_json("[]").is_err());
        assert!(Phases::parse_json("request_headers").is_err());
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.as_str()).unwrap(), phase);
        }
    }
}
