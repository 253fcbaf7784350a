//! The proxy-wasm ABI 0.2.1 as the Rust SDK 0.2.x speaks it: enums with the
//! SDK's discriminants, and the header-map wire format.

/// Answers of host functions.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// No such header, property, shared data key, queue or metric, or an
    /// empty range of a buffer.
    NotFound = 1,
    /// An argument the call refuses: an unknown map or buffer type, an
    /// unknown cluster, a metric of the wrong kind.
    BadArgument = 2,
    /// A value could not be serialized; kiln's host never answers it.
    SerializationFailure = 3,
    /// Bytes from the plugin did not parse, such as a header map.
    ParseFailure = 4,
    /// The shared queue held nothing to dequeue.
    Empty = 7,
    /// A shared data write named a version (its CAS) that is not the
    /// current one.
    CasMismatch = 8,
    /// The host failed on its own account; kiln's host never answers it.
    InternalFailure = 10,
    /// The host does not implement the call; kiln's host traps instead.
    Unimplemented = 12,
}

/// The header maps a plugin reads and changes, with the ABI's numbering.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// The request's headers, pseudo-headers included.
    HttpRequestHeaders = 0,
    /// The request's trailers.
    HttpRequestTrailers = 1,
    /// The response's headers, `:status` included.
    HttpResponseHeaders = 2,
    /// The response's trailers.
    HttpResponseTrailers = 3,
    /// The headers of the answer to an HTTP call out (`proxy_http_call`).
    HttpCallResponseHeaders = 6,
    /// The trailers of the answer to an HTTP call out.
    HttpCallResponseTrailers = 7,
}

impl MapType {
    /// The map with the ABI's number `v`; `None` for a number the host
    /// does not know (the guest is untrusted).
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestHeaders,
            1 => Self::HttpRequestTrailers,
            2 => Self::HttpResponseHeaders,
            3 => Self::HttpResponseTrailers,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// The byte buffers a plugin reads and changes, with the ABI's numbering.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// The request body, as much of it as has been delivered.
    HttpRequestBody = 0,
    /// The response body, as much of it as has been delivered.
    HttpResponseBody = 1,
    /// The body of the answer to an HTTP call out.
    HttpCallResponseBody = 4,
    /// The VM's configuration, read at `proxy_on_vm_start`; empty in kiln's
    /// host.
    VmConfiguration = 6,
    /// The plugin's configuration (a version's `conf`), read at
    /// `proxy_on_configure`.
    PluginConfiguration = 7,
}

impl BufferType {
    /// The buffer with the ABI's number `v`; `None` for a number the host
    /// does not know (the guest is untrusted).
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            4 => Self::HttpCallResponseBody,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            _ => return None,
        })
    }
}

/// What a stream callback asks of the host.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the stream go on to the next filter.
    Continue = 0,
    /// Hold the stream until the plugin resumes it (`proxy_continue_stream`).
    Pause = 1,
}

/// The name of a `proxy_log` level (`trace` to `critical`); `unknown` for
/// a level the ABI does not define.
pub fn log_level_name(level: u32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        5 => "critical",
        _ => "unknown",
    }
}

/// Header pairs in the SDK's format: count, then (key length, value length)
/// pairs, then each key and value followed by a NUL.
pub fn serialize_map(map: &[(String, String)]) -> Vec<u8> {
    let mut bytes = (map.len() as u32).to_le_bytes().to_vec();
    for (k, v) in map {
        bytes.extend((k.len() as u32).to_le_bytes());
        bytes.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        bytes.extend(k.as_bytes());
        bytes.push(0);
        bytes.extend(v.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// The inverse of [`serialize_map`]; `None` for bytes that do not parse
/// (the guest is untrusted).
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut map = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let (klen, vlen) = (u32_at(4 + n * 8)?, u32_at(8 + n * 8)?);
        let key = bytes.get(at..at.checked_add(klen)?)?;
        at = at.checked_add(klen + 1)?;
        let value = bytes.get(at..at.checked_add(vlen)?)?;
        at = at.checked_add(vlen + 1)?;
        map.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_garbage_is_refused() {
        let map = vec![
            (":path".to_owned(), "/a".to_owned()),
            ("x".to_owned(), String::new()),
        ];
        assert_eq!(deserialize_map(&serialize_map(&map)).unwrap(), map);
        assert_eq!(deserialize_map(&[]).unwrap(), vec![]);
        assert!(deserialize_map(&[5, 0, 0, 0, 1]).is_none());
        assert!(deserialize_map(&[255, 255, 255, 255]).is_none());
    }
}
