//! A hostile test case: the attack is in build.rs. The exports make the
//! module pass kiln's proxy-wasm check, so that its binary is kept and can
//! be searched for leaked secrets.

include!(concat!(env!("OUT_DIR"), "/loot.rs"));

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> usize {
    LOOT.len() + size
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: u32, _end: u32) -> u32 {
    LOOT.as_bytes().first().copied().unwrap_or(0) as u32
}

/// Keeps the whole of LOOT in the module's data.
#[unsafe(no_mangle)]
pub extern "C" fn loot() -> *const u8 {
    LOOT.as_ptr()
}
