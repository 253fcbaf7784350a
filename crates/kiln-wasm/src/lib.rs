//! kiln-wasm
