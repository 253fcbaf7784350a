//! What a proxy would hand a filter: the checks that refuse a request line,
//! a header or a status no proxy forwards, and the stub answer of an origin
//! or a cluster. A plugin is tried on requests it can meet.

use serde::{Deserialize, Serialize};

/// The upstream the request is forwarded to, and the answer of any HTTP
/// call the plugin dispatches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpstreamStub {
    /// The HTTP status (default 200).
    #[serde(default = "ok_status")]
    pub status: u32,
    /// Response headers as [name, value] pairs.
    #[serde(default)]
    #[schema(schema_with = header_pairs)]
    pub headers: Vec<(String, String)>,
    /// The response body (default empty).
    #[serde(default)]
    pub body: String,
}

/// The schema of headers as `[[name, value], …]`: each pair exactly two
/// strings.
pub fn header_pairs() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let pair = ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String))
        .min_items(Some(2))
        .max_items(Some(2));
    ArrayBuilder::new().items(pair).build()
}

fn ok_status() -> u32 {
    200
}

impl Default for UpstreamStub {
    fn default() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// A request that no HTTP proxy would hand a filter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub(crate) String);

/// Refuses a request line or header no proxy would hand a filter.
pub(crate) fn check_request(
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), InvalidRequest> {
    let invalid = |message: String| Err(InvalidRequest(message));
    if !is_token(method) {
        return invalid(format!(
            "the method {method:?} is not an HTTP method (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    // A proxy strips the fragment before a filter sees the path.
    let allowed = |c: char| c.is_ascii_graphic() && c != '#';
    let asterisk = path == "*" && method == "OPTIONS";
    if !(path.starts_with('/') || asterisk) || !path.chars().all(allowed) {
        return invalid(format!(
            "the path {path:?} must start with / (or be * for OPTIONS) and hold only visible ASCII characters without # (percent-encode the rest)"
        ));
    }
    check_fields("request", headers)
}

/// RFC 9110's token: the characters of a method or a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn check_fields(
    whose: &str,
    headers: &[(String, String)],
) -> Result<(), InvalidRequest> {
    for (name, value) in headers {
        if !is_token(name) {
            return Err(InvalidRequest(format!(
                "the {whose} header name {name:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~; :method, :path and :status come from the method, path and upstream status; :authority from the Host header (default kiln.test), :scheme is http)"
            )));
        }
        if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
            return Err(InvalidRequest(format!(
                "the {whose} header {name:?} has a control character in its value"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_status(whose: &str, status: u32) -> Result<(), InvalidRequest> {
    if !(100..=599).contains(&status) {
        return Err(InvalidRequest(format!(
            "the {whose} status {status} is not an HTTP status (100 to 599)"
        )));
    }
    Ok(())
}
