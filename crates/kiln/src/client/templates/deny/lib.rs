//! Answers requests under `/admin` itself with a 403 and a JSON body;
//! every other request goes on to the upstream.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(DenyPath) });
}}

struct DenyPath;

impl Context for DenyPath {}

impl HttpContext for DenyPath {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path == "/admin" || path.starts_with("/admin/") || path.starts_with("/admin?") {
            log::info!("refused {path}");
            self.send_http_response(
                403,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"forbidden"}"#),
            );
            return Action::Pause;
        }
        Action::Continue
    }
}
