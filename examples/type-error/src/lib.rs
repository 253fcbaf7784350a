//! Does not compile, on purpose: kiln reports the build `failed` with
//! rustc's error (E0308) in its log.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Broken) });
}}

struct Broken;

impl Context for Broken {}

impl HttpContext for Broken {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let status: u32 = "not a number";
        self.send_http_response(status, vec![], None);
        Action::Pause
    }
}
