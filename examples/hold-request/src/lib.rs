//! Holds every request under `/hold` paused and never resumes it: the
//! client waits until the proxy gives up on the stream. Other requests
//! pass; every response gets `x-hold-request: passed`.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(HoldRequest) });
}}

struct HoldRequest;

impl Context for HoldRequest {}

impl HttpContext for HoldRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with("/hold") {
            log::info!("hold-request: holding {path}");
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        log::info!("hold-request: response {status}");
        self.set_http_response_header("x-hold-request", Some("passed"));
        Action::Continue
    }
}
