//! A filter whose Wizer init function never returns: kiln runs it at build
//! time, in the sandbox, where its limits stop it.

use proxy_wasm::traits::{Context, HttpContext};

/// Spins forever, burning CPU.
#[export_name = "wizer.initialize"]
pub extern "C" fn wizer_initialize() {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Spinning) });
}}

struct Spinning;

impl Context for Spinning {}

impl HttpContext for Spinning {}
