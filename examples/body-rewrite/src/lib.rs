//! Rewrites bodies it has seen whole: each body is buffered (`Pause`)
//! until the end of its stream, then the request body is forwarded in
//! upper case and the response body is wrapped as `{"wrapped":"<body>"}`.
//! Requests without a body and responses without a body pass unchanged.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(BodyRewrite) });
}}

struct BodyRewrite;

impl Context for BodyRewrite {}

impl HttpContext for BodyRewrite {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // The body changes length once rewritten.
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let upper = String::from_utf8_lossy(&body).to_uppercase();
        self.set_http_request_body(0, body_size, upper.as_bytes());
        log::info!("body-rewrite: request body of {body_size} bytes upper-cased");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            self.set_http_response_header("content-length", None);
            self.set_http_response_header("x-body-rewrite", Some("wrapped"));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let wrapped = format!(r#"{{"wrapped":"{}"}}"#, String::from_utf8_lossy(&body));
        self.set_http_response_body(0, body_size, wrapped.as_bytes());
        log::info!("body-rewrite: response body of {body_size} bytes wrapped");
        Action::Continue
    }
}
