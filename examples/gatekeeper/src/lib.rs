//! Lets a request through only when two services agree. It asks the
//! cluster `auth` (`GET /check`, with the request's `authorization`) who
//! the caller is, then the cluster `quota` (`GET /quota/<user>`) whether
//! they may go on; a counter in shared data (`gatekeeper.count`) caps the
//! requests let through at the plugin configuration's number (default
//! 100). It counts its decisions in the metrics `gatekeeper_allowed` and
//! `gatekeeper_denied`.
//!
//! - no `authorization`: 401, without a call;
//! - `auth` does not answer 200: 403 `denied by auth`;
//! - `quota` does not answer 200, or the cap is reached: 429;
//! - otherwise the request goes on with `x-user: <auth's x-user>` and
//!   `x-quota: <quota's body>`, and its response carries
//!   `x-gatekeeper-count: <requests let through so far>`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(GatekeeperRoot { limit: 100, metrics: Metrics::default() })
    });
}}

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Default)]
struct Metrics {
    allowed: u32,
    denied: u32,
}

struct GatekeeperRoot {
    limit: u64,
    metrics: Metrics,
}

impl Context for GatekeeperRoot {}

impl RootContext for GatekeeperRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(conf) = self.get_plugin_configuration() {
            match String::from_utf8_lossy(&conf).trim().parse() {
                Ok(limit) => self.limit = limit,
                Err(_) => {
                    log::warn!("gatekeeper: the configuration is not a number");
                    return false;
                }
            }
        }
        self.metrics = Metrics {
            allowed: hostcalls::define_metric(MetricType::Counter, "gatekeeper_allowed").unwrap(),
            denied: hostcalls::define_metric(MetricType::Counter, "gatekeeper_denied").unwrap(),
        };
        log::info!("gatekeeper: at most {} requests", self.limit);
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gatekeeper {
            limit: self.limit,
            metrics: self.metrics,
            step: Step::Auth,
            count: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

enum Step {
    Auth,
    Quota { user: String },
}

struct Gatekeeper {
    limit: u64,
    metrics: Metrics,
    step: Step,
    count: u64,
}

impl Gatekeeper {
    fn deny(&mut self, status: u32, body: &str) {
        hostcalls::increment_metric(self.metrics.denied, 1).unwrap();
        log::info!("gatekeeper: denied with {status}");
        self.send_http_response(
            status,
            vec![("content-type", "text/plain")],
            Some(body.as_bytes()),
        );
    }

    /// Adds one to the shared counter and answers the new count.
    fn count(&self) -> u64 {
        loop {
            let (value, cas) = self.get_shared_data("gatekeeper.count");
            let count = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            match self.set_shared_data("gatekeeper.count", Some(count.to_string().as_bytes()), cas)
            {
                Ok(()) => return count,
                Err(Status::CasMismatch) => continue,
                Err(status) => panic!("set_shared_data: {status:?}"),
            }
        }
    }

    fn call(&mut self, cluster: &str, path: &str, auth: Option<&str>) -> bool {
        let mut headers = vec![(":method", "GET"), (":path", path), (":authority", cluster)];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        match self.dispatch_http_call(cluster, headers, None, vec![], TIMEOUT) {
            Ok(_) => true,
            Err(status) => {
                log::warn!("gatekeeper: calling {cluster} failed: {status:?}");
                self.deny(503, "no decision");
                false
            }
        }
    }
}

impl Context for Gatekeeper {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        match std::mem::replace(&mut self.step, Step::Auth) {
            Step::Auth => {
                log::info!("gatekeeper: auth answered {status}");
                if status != "200" {
                    return self.deny(403, "denied by auth");
                }
                let user = self
                    .get_http_call_response_header("x-user")
                    .unwrap_or_default();
                if self.call("quota", &format!("/quota/{user}"), None) {
                    self.step = Step::Quota { user };
                }
            }
            Step::Quota { user } => {
                log::info!("gatekeeper: quota answered {status}");
                if status != "200" {
                    return self.deny(429, "over quota");
                }
                self.count = self.count();
                if self.count > self.limit {
                    return self.deny(429, "over the limit");
                }
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
                self.set_http_request_header("x-user", Some(&user));
                self.set_http_request_header("x-quota", Some(&String::from_utf8_lossy(&body)));
                hostcalls::increment_metric(self.metrics.allowed, 1).unwrap();
                log::info!("gatekeeper: allowed {user} ({})", self.count);
                self.resume_http_request();
            }
        }
    }
}

impl HttpContext for Gatekeeper {
    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let Some(auth) = self.get_http_request_header("authorization") else {
            self.deny(401, "no credentials");
            return Action::Pause;
        };
        self.call("auth", "/check", Some(&auth));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        if self.count > 0 {
            self.set_http_response_header("x-gatekeeper-count", Some(&self.count.to_string()));
        }
        Action::Continue
    }
}
