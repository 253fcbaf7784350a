//! The properties a plugin reads (`proxy_get_property`), as Envoy names
//! and serializes them.

use super::HostState;
use crate::abi::MapType;

/// A property value as Envoy serializes it: strings as their bytes,
/// integers as 8 bytes little-endian, booleans as one byte, maps as a
/// header map.
enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    Map(Vec<(String, String)>),
}

impl Value {
    fn bytes(self) -> Vec<u8> {
        match self {
            Self::Text(text) => text.into_bytes(),
            Self::Int(n) => n.to_le_bytes().to_vec(),
            Self::Bool(b) => vec![b as u8],
            Self::Map(pairs) => crate::abi::serialize_map(&pairs),
        }
    }
}

/// Where the stub connection comes from and goes to.
pub(crate) const SOURCE_ADDRESS: &str = "127.0.0.1";
pub(crate) const SOURCE_PORT: i64 = 50000;
pub(crate) const DESTINATION_ADDRESS: &str = "127.0.0.1";
pub(crate) const DESTINATION_PORT: i64 = 10000;

fn header(map: Option<&Vec<(String, String)>>, name: &str) -> Option<String> {
    map?.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

impl HostState {
    /// The property at a dotted path, as Envoy names and serializes it:
    /// the request's, the response's, the connection's, the plugin's, and
    /// any the plugin set itself. Computed when asked: most plugins never
    /// ask, and a cold start should not build them.
    pub(crate) fn property(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(value) = self.properties_set.get(key) {
            return Some(value.clone());
        }
        let info = &self.stream;
        let request = self.maps.get(&(MapType::HttpRequestHeaders as u32));
        let response = self.maps.get(&(MapType::HttpResponseHeaders as u32));
        let request_header = |name: &str| header(request, name).map(Value::Text);
        for (prefix, map) in [
            ("request.headers.", request),
            ("response.headers.", response),
        ] {
            if let Some(name) = key.strip_prefix(prefix) {
                return header(map, name).map(|v| v.into_bytes());
            }
        }
        let text = |s: &str| Some(Value::Text(s.to_owned()));
        let value = match key {
            "request.path" => text(&info.path),
            "request.url_path" => text(info.path.split('?').next().unwrap_or("/")),
            "request.query" => text(info.path.split_once('?').map_or("", |(_, q)| q)),
            "request.method" => text(&info.method),
            "request.host" => text(&info.host),
            "request.scheme" => text("http"),
            "request.protocol" => text("HTTP/1.1"),
            "request.id" => text(&info.request_id),
            "request.referer" => request_header("referer"),
            "request.useragent" => request_header("user-agent"),
            "request.headers" => request.cloned().map(Value::Map),
            "request.time" => Some(Value::Int(info.start_ns as i64)),
            "request.size" => Some(Value::Int(info.body_bytes as i64)),
            "response.headers" => response.cloned().map(Value::Map),
            "response.code" => header(response, ":status")
                .and_then(|s| s.parse().ok())
                .map(Value::Int),
            "response.code_details" if !info.code_details.is_empty() => text(&info.code_details),
            "response.flags" => response.map(|_| Value::Int(0)),
            "source.address" => text(&format!("{SOURCE_ADDRESS}:{SOURCE_PORT}")),
            "source.port" => Some(Value::Int(SOURCE_PORT)),
            "destination.address" => text(&format!("{DESTINATION_ADDRESS}:{DESTINATION_PORT}")),
            "destination.port" => Some(Value::Int(DESTINATION_PORT)),
            "connection.id" => Some(Value::Int(info.connection_id as i64)),
            "connection.mtls" => Some(Value::Bool(false)),
            "connection.requested_server_name" => text(""),
            "plugin_name" | "plugin_vm_id" => text("kiln"),
            "plugin_root_id" => text(""),
            _ => None,
        };
        value.map(Value::bytes)
    }
}
