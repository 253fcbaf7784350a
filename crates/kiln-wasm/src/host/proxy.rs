//! The proxy-wasm host functions: one function per ABI import, named like
//! the import and holding its marshalling, as the SDK's `hostcalls.rs`
//! pairs each import with its wrapper; [`add_to_linker`] registers them.

use super::memory::{read, read_string, return_bytes, write_u32};
use super::{HostState, LocalResponse, MetricKind, PendingCall};
use crate::abi::{BufferType, MapType, Status, deserialize_map, log_level_name};
use std::collections::{HashSet, VecDeque};
use wasmtime::{Caller, FuncType, Linker, ValType};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<u32>;

const OK: R = Ok(Status::Ok as u32);

/// ABI functions kiln's host does not implement, with their number of
/// (i32) parameters; each returns a status.
const NOT_IMPLEMENTED: [(&str, usize); 6] = [
    ("proxy_grpc_call", 12),
    ("proxy_grpc_stream", 9),
    ("proxy_grpc_send", 4),
    ("proxy_grpc_cancel", 1),
    ("proxy_grpc_close", 1),
    ("proxy_call_foreign_function", 6),
];

fn status(s: Status) -> R {
    Ok(s as u32)
}

fn map_type(raw: u32) -> Option<MapType> {
    MapType::from_u32(raw)
}

/// A property path arrives as NUL-separated segments; kiln keys it with dots.
fn property_key(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

pub(crate) fn add_to_linker(
    linker: &mut Linker<HostState>,
    defined: &mut HashSet<(&'static str, &'static str)>,
) -> wasmtime::Result<()> {
    // Each import is linked under its function's own name.
    macro_rules! host {
        ($($name:ident),* $(,)?) => {$(
            linker.func_wrap("env", stringify!($name), $name)?;
            defined.insert(("env", stringify!($name)));
        )*};
    }

    host!(
        proxy_log,
        proxy_get_log_level,
        proxy_get_current_time_nanoseconds,
        proxy_set_tick_period_milliseconds,
        proxy_get_buffer_bytes,
        proxy_set_buffer_bytes,
        proxy_get_header_map_pairs,
        proxy_set_header_map_pairs,
        proxy_get_header_map_value,
        proxy_replace_header_map_value,
        proxy_remove_header_map_value,
        proxy_add_header_map_value,
        proxy_get_property,
        proxy_set_property,
        proxy_get_shared_data,
        proxy_set_shared_data,
        proxy_register_shared_queue,
        proxy_resolve_shared_queue,
        proxy_enqueue_shared_queue,
        proxy_dequeue_shared_queue,
        proxy_continue_stream,
        proxy_close_stream,
        proxy_send_local_response,
        proxy_http_call,
        proxy_define_metric,
        proxy_increment_metric,
        proxy_record_metric,
        proxy_get_metric,
        proxy_set_effective_context,
        proxy_done,
    );
    // The rest of the ABI the SDK imports, linked here so that linking a
    // plugin needs no per-module definitions; a call traps naming it.
    for (name, params) in NOT_IMPLEMENTED {
        let ty = FuncType::new(linker.engine(), vec![ValType::I32; params], [ValType::I32]);
        linker.func_new("env", name, ty, move |_, _, _| {
            Err(super::not_implemented("env", name))
        })?;
        defined.insert(("env", name));
    }
    host!(proxy_get_status);
    Ok(())
}

fn proxy_log(mut c: C, level: u32, ptr: u32, len: u32) -> R {
    let message = read_string(&mut c, ptr, len)?;
    c.data_mut().log(log_level_name(level), message)?;
    OK
}

fn proxy_get_log_level(mut c: C, ret: u32) -> R {
    write_u32(&mut c, ret, 0)?;
    OK
}

fn proxy_get_current_time_nanoseconds(mut c: C, ret: u32) -> R {
    let now = c.data().now_ns;
    super::memory::write(&mut c, ret, &now.to_le_bytes())?;
    OK
}

fn proxy_set_tick_period_milliseconds(mut c: C, period: u32) -> R {
    // As in Envoy, setting the period restarts the timer; 0 stops it.
    let state = c.data_mut();
    state.tick_period_ms = period;
    state.next_tick_ns =
        (period > 0).then(|| state.now_ns.saturating_add(u64::from(period) * 1_000_000));
    OK
}

fn proxy_get_buffer_bytes(mut c: C, kind: u32, start: u32, max: u32, data: u32, size: u32) -> R {
    let buffer = {
        let state = c.data();
        match BufferType::from_u32(kind) {
            Some(BufferType::PluginConfiguration) => state.plugin_conf.clone(),
            Some(BufferType::VmConfiguration) => state.vm_conf.clone(),
            Some(other) => state
                .buffers
                .get(&(other as u32))
                .cloned()
                .unwrap_or_default(),
            None => return status(Status::BadArgument),
        }
    };
    let start = (start as usize).min(buffer.len());
    let end = start.saturating_add(max as usize).min(buffer.len());
    if start == end {
        return status(Status::NotFound);
    }
    return_bytes(&mut c, &buffer[start..end], data, size)?;
    OK
}

fn proxy_set_buffer_bytes(mut c: C, kind: u32, start: u32, size: u32, ptr: u32, len: u32) -> R {
    let Some(kind) = BufferType::from_u32(kind) else {
        return status(Status::BadArgument);
    };
    let bytes = read(&mut c, ptr, len)?;
    c.data_mut().keep(bytes.len())?;
    let buffer = c.data_mut().buffers.entry(kind as u32).or_default();
    let start = (start as usize).min(buffer.len());
    let end = start.saturating_add(size as usize).min(buffer.len());
    buffer.splice(start..end, bytes);
    OK
}

fn proxy_get_header_map_pairs(mut c: C, map: u32, data: u32, size: u32) -> R {
    let Some(map) = map_type(map) else {
        return status(Status::BadArgument);
    };
    let bytes = crate::abi::serialize_map(c.data_mut().map_mut(map));
    return_bytes(&mut c, &bytes, data, size)?;
    OK
}

fn proxy_set_header_map_pairs(mut c: C, map: u32, ptr: u32, len: u32) -> R {
    let Some(map) = map_type(map) else {
        return status(Status::BadArgument);
    };
    let bytes = read(&mut c, ptr, len)?;
    c.data_mut().keep(bytes.len())?;
    let Some(pairs) = deserialize_map(&bytes) else {
        return status(Status::ParseFailure);
    };
    *c.data_mut().map_mut(map) = pairs;
    OK
}

fn proxy_get_header_map_value(mut c: C, map: u32, kptr: u32, klen: u32, data: u32, size: u32) -> R {
    let Some(map) = map_type(map) else {
        return status(Status::BadArgument);
    };
    let key = read_string(&mut c, kptr, klen)?.to_ascii_lowercase();
    let value = c
        .data_mut()
        .map_mut(map)
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&key))
        .map(|(_, v)| v.clone());
    match value {
        Some(value) => {
            return_bytes(&mut c, value.as_bytes(), data, size)?;
            OK
        }
        None => status(Status::NotFound),
    }
}

fn proxy_replace_header_map_value(
    mut c: C,
    map: u32,
    kptr: u32,
    klen: u32,
    vptr: u32,
    vlen: u32,
) -> R {
    let Some(map) = map_type(map) else {
        return status(Status::BadArgument);
    };
    let key = read_string(&mut c, kptr, klen)?.to_ascii_lowercase();
    let value = read_string(&mut c, vptr, vlen)?;
    c.data_mut().keep(key.len() + value.len())?;
    let pairs = c.data_mut().map_mut(map);
    pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
    pairs.push((key, value));
    OK
}

fn proxy_remove_header_map_value(mut c: C, map: u32, kptr: u32, klen: u32) -> R {
    let Some(map) = map_type(map) else {
        return status(Status::BadArgument);
    };
    let key = read_string(&mut c, kptr, klen)?;
    c.data_mut()
        .map_mut(map)
        .retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
    OK
}

fn proxy_add_header_map_value(mut c: C, map: u32, kptr: u32, klen: u32, vptr: u32, vlen: u32) -> R {
    let Some(map) = map_type(map) else {
        return status(Status::BadArgument);
    };
    let key = read_string(&mut c, kptr, klen)?.to_ascii_lowercase();
    let value = read_string(&mut c, vptr, vlen)?;
    c.data_mut().keep(key.len() + value.len())?;
    c.data_mut().map_mut(map).push((key, value));
    OK
}

fn proxy_get_property(mut c: C, ptr: u32, len: u32, data: u32, size: u32) -> R {
    let key = property_key(&read(&mut c, ptr, len)?);
    match c.data().property(&key) {
        Some(value) => {
            return_bytes(&mut c, &value, data, size)?;
            OK
        }
        None => status(Status::NotFound),
    }
}

fn proxy_set_property(mut c: C, ptr: u32, len: u32, vptr: u32, vlen: u32) -> R {
    let key = property_key(&read(&mut c, ptr, len)?);
    let value = read(&mut c, vptr, vlen)?;
    c.data_mut().keep(key.len() + value.len())?;
    c.data_mut().properties_set.insert(key, value);
    OK
}

fn proxy_get_shared_data(mut c: C, kptr: u32, klen: u32, data: u32, size: u32, cas: u32) -> R {
    let key = read_string(&mut c, kptr, klen)?;
    match c.data().shared_data.get(&key).cloned() {
        Some((value, version)) => {
            return_bytes(&mut c, &value, data, size)?;
            write_u32(&mut c, cas, version)?;
            OK
        }
        None => status(Status::NotFound),
    }
}

fn proxy_set_shared_data(mut c: C, kptr: u32, klen: u32, vptr: u32, vlen: u32, cas: u32) -> R {
    let key = read_string(&mut c, kptr, klen)?;
    let value = read(&mut c, vptr, vlen)?;
    c.data_mut().keep(key.len() + value.len())?;
    let shared = &mut c.data_mut().shared_data;
    let version = shared.get(&key).map_or(0, |(_, v)| *v);
    if cas != 0 && cas != version {
        return status(Status::CasMismatch);
    }
    shared.insert(key, (value, version + 1));
    OK
}

fn proxy_register_shared_queue(mut c: C, ptr: u32, len: u32, ret: u32) -> R {
    let name = read_string(&mut c, ptr, len)?;
    let state = c.data_mut();
    let id = match state.queues.iter().position(|(n, _)| *n == name) {
        Some(i) => i,
        None => {
            state.keep(name.len())?;
            let queues = &mut state.queues;
            queues.push((name, VecDeque::new()));
            queues.len() - 1
        }
    };
    write_u32(&mut c, ret, id as u32 + 1)?;
    OK
}

fn proxy_resolve_shared_queue(mut c: C, _vm: u32, _vm_len: u32, ptr: u32, len: u32, ret: u32) -> R {
    let name = read_string(&mut c, ptr, len)?;
    match c.data().queues.iter().position(|(n, _)| *n == name) {
        Some(i) => {
            write_u32(&mut c, ret, i as u32 + 1)?;
            OK
        }
        None => status(Status::NotFound),
    }
}

fn proxy_enqueue_shared_queue(mut c: C, id: u32, ptr: u32, len: u32) -> R {
    let value = read(&mut c, ptr, len)?;
    let state = c.data_mut();
    let index = (id as usize).wrapping_sub(1);
    if index >= state.queues.len() {
        return status(Status::NotFound);
    }
    state.keep(value.len())?;
    state.queues[index].1.push_back(value);
    OK
}

fn proxy_dequeue_shared_queue(mut c: C, id: u32, data: u32, size: u32) -> R {
    let item = match c.data_mut().queues.get_mut((id as usize).wrapping_sub(1)) {
        Some((_, queue)) => queue.pop_front(),
        None => return status(Status::NotFound),
    };
    match item {
        Some(value) => {
            return_bytes(&mut c, &value, data, size)?;
            OK
        }
        None => status(Status::Empty),
    }
}

fn proxy_continue_stream(mut c: C, _stream: u32) -> R {
    c.data_mut().continued = true;
    OK
}

fn proxy_close_stream(_c: C, _stream: u32) -> R {
    OK
}

// The ABI's own signature.
#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut c: C,
    code: u32,
    _dptr: u32,
    _dlen: u32,
    bptr: u32,
    blen: u32,
    hptr: u32,
    hlen: u32,
    _grpc: i32,
) -> R {
    let body = read_string(&mut c, bptr, blen)?;
    let headers = read(&mut c, hptr, hlen)?;
    c.data_mut().keep(body.len() + headers.len())?;
    let Some(headers) = deserialize_map(&headers) else {
        return status(Status::ParseFailure);
    };
    c.data_mut().local_response = Some(LocalResponse {
        status: code,
        headers,
        body,
    });
    OK
}

// The ABI's own signature.
#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut c: C,
    up: u32,
    up_len: u32,
    h: u32,
    hl: u32,
    b: u32,
    bl: u32,
    _t: u32,
    _tl: u32,
    _timeout: u32,
    ret: u32,
) -> R {
    let cluster = read_string(&mut c, up, up_len)?;
    let headers = read(&mut c, h, hl)?;
    let body = read_string(&mut c, b, bl)?;
    c.data_mut()
        .keep(cluster.len() + headers.len() + body.len())?;
    let Some(headers) = deserialize_map(&headers) else {
        return status(Status::ParseFailure);
    };
    let state = c.data_mut();
    // Envoy refuses a cluster it does not know, and a call without the
    // pseudo-headers a request needs.
    let known = state.clusters.as_ref().is_none_or(|k| k.contains(&cluster));
    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
    if !(known && has(":method") && has(":path") && has(":authority")) {
        return status(Status::BadArgument);
    }
    let token = state.next_token;
    state.next_token += 1;
    let context = state.current_context;
    let call = super::CallOut {
        cluster,
        headers,
        body,
    };
    state.pending_calls.push_back(PendingCall {
        token,
        context,
        call,
    });
    write_u32(&mut c, ret, token)?;
    OK
}

fn proxy_define_metric(mut c: C, kind: u32, ptr: u32, len: u32, ret: u32) -> R {
    let kind = match kind {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        _ => return status(Status::BadArgument),
    };
    let name = read_string(&mut c, ptr, len)?;
    c.data_mut()
        .keep(name.len() + std::mem::size_of::<super::Metric>())?;
    let id = c.data_mut().define_metric(kind, name);
    write_u32(&mut c, ret, id)?;
    OK
}

fn proxy_increment_metric(mut c: C, id: u32, offset: i64) -> R {
    status(c.data_mut().increment_metric(id, offset))
}

fn proxy_record_metric(mut c: C, id: u32, value: i64) -> R {
    status(c.data_mut().record_metric(id, value as u64))
}

fn proxy_get_metric(mut c: C, id: u32, ret: u32) -> R {
    match c.data_mut().get_metric(id) {
        Ok(value) => {
            super::memory::write(&mut c, ret, &value.to_le_bytes())?;
            OK
        }
        Err(s) => status(s),
    }
}

fn proxy_set_effective_context(mut c: C, context: u32) -> R {
    c.data_mut().current_context = context;
    OK
}

fn proxy_done(_c: C) -> R {
    OK
}

fn proxy_get_status(mut c: C, code: u32, data: u32, size: u32) -> R {
    write_u32(&mut c, code, 0)?;
    return_bytes(&mut c, b"", data, size)?;
    OK
}
