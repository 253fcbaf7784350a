//! kiln-wasm holds everything that reads WebAssembly: the check that a
//! built module is a proxy-wasm plugin for the phases it declares.
//!
//! Layout:
//! - [`check`]: validation and the proxy-wasm ABI exports.

pub mod check;
