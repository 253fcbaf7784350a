//! Adds headers on the way in and out. The response carries
//! `x-powered-by: kiln` and `x-kiln-conf: <the plugin configuration>`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AddHeaderRoot { conf: String::new() }) });
}}

struct AddHeaderRoot {
    conf: String,
}

impl Context for AddHeaderRoot {}

impl RootContext for AddHeaderRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            self.conf = String::from_utf8_lossy(&bytes).into_owned();
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader { conf: self.conf.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader {
    conf: String,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        self.add_http_request_header("x-kiln-filter", env!("CARGO_PKG_NAME"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        self.add_http_response_header("x-powered-by", "kiln");
        if !self.conf.is_empty() {
            self.add_http_response_header("x-kiln-conf", &self.conf);
        }
        log::info!("response headers added");
        Action::Continue
    }
}
