//! A timer in the root context and a counter shared between streams. The
//! root context ticks every 100 ms until its first tick, which stores
//! `ticker.ticked = 1` in shared data. Each request increments the shared
//! `ticker.hits` (with compare-and-swap) and its response carries
//! `x-ticker-hits: <hits so far>` and `x-ticker-ticked: <0 or 1>`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TickerRoot) });
}}

struct TickerRoot;

impl Context for TickerRoot {}

impl RootContext for TickerRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        if self
            .set_shared_data("ticker.ticked", Some(b"1"), None)
            .is_ok()
        {
            log::info!("ticker: first tick");
        }
        self.set_tick_period(Duration::ZERO);
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Ticker { hits: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Ticker {
    hits: u64,
}

impl Context for Ticker {}

fn number(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl HttpContext for Ticker {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        loop {
            let (value, cas) = self.get_shared_data("ticker.hits");
            let hits = number(value) + 1;
            match self.set_shared_data("ticker.hits", Some(hits.to_string().as_bytes()), cas) {
                Ok(()) => {
                    self.hits = hits;
                    break;
                }
                Err(Status::CasMismatch) => continue,
                Err(status) => panic!("set_shared_data: {status:?}"),
            }
        }
        log::info!("ticker: request {}", self.hits);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let ticked = number(self.get_shared_data("ticker.ticked").0);
        self.set_http_response_header("x-ticker-hits", Some(&self.hits.to_string()));
        self.set_http_response_header("x-ticker-ticked", Some(&ticked.to_string()));
        Action::Continue
    }
}
