//! Guest memory access. Pointers and lengths come from untrusted code:
//! every access is bounds-checked, and a bad one is a trap, not a panic.

use super::HostState;
use wasmtime::{Caller, Extern, Memory};

fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => wasmtime::bail!("the plugin does not export its memory"),
    }
}

pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let data = memory.data(&caller);
    let (start, end) = (ptr as usize, ptr as usize + len as usize);
    match data.get(start..end) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => wasmtime::bail!("out-of-bounds read of {len} bytes at {ptr:#x}"),
    }
}

pub(crate) fn read_string(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    let memory = memory(caller)?;
    match memory
        .data_mut(caller)
        .get_mut(ptr as usize..ptr as usize + bytes.len())
    {
        Some(target) => {
            target.copy_from_slice(bytes);
            Ok(())
        }
        None => wasmtime::bail!("out-of-bounds write of {} bytes at {ptr:#x}", bytes.len()),
    }
}

pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    value: u32,
) -> wasmtime::Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates itself, and stores the
/// address and length at the two return pointers, as the SDK expects.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    data_ptr: u32,
    size_ptr: u32,
) -> wasmtime::Result<()> {
    let alloc = ["proxy_on_memory_allocate", "malloc"]
        .iter()
        .find_map(|name| caller.get_export(name).and_then(Extern::into_func))
        .ok_or_else(|| wasmtime::format_err!("the plugin exports no memory allocator"))?;
    let alloc = alloc.typed::<u32, u32>(&caller)?;
    let addr = alloc.call(&mut *caller, bytes.len() as u32)?;
    if addr == 0 && !bytes.is_empty() {
        wasmtime::bail!("the plugin's allocator returned null");
    }
    write(caller, addr, bytes)?;
    write_u32(caller, data_ptr, addr)?;
    write_u32(caller, size_ptr, bytes.len() as u32)
}
