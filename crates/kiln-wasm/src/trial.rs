//! Trying a plugin on one HTTP exchange: the request goes through the
//! plugin's request callbacks, is either answered locally or forwarded to a
//! stub upstream, and the upstream's response goes through the response
//! callbacks. The result says what the plugin did, with its logs.

use crate::abi::{BufferType, MapType};
use crate::host::{HostEngine, HostError, HostState, KeptTooMuch, LocalResponse, LogLine, Plugin};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use wasmtime::{Instance, Store, Trap, Val};

const ROOT_CONTEXT: u32 = 1;
const HTTP_CONTEXT: u32 = 2;

/// The upstream the request is forwarded to, and the answer of any HTTP
/// call the plugin dispatches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStub {
    #[serde(default = "ok_status")]
    pub status: u32,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
}

fn ok_status() -> u32 {
    200
}

impl Default for UpstreamStub {
    fn default() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialRequest {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub upstream: UpstreamStub,
    /// The plugin configuration (a version's `conf`).
    #[serde(default)]
    pub conf: String,
    /// Timer ticks delivered to the root context after start.
    #[serde(default)]
    pub ticks: u32,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// A trial request that no HTTP proxy would hand a filter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(String);

impl TrialRequest {
    /// Refuses what a proxy would refuse before any filter sees it: a
    /// method or header name that is not an HTTP token, a path that is not
    /// an origin path, a control character in a header value, a status
    /// outside 100–599. A plugin is tried on requests it can meet.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        let invalid = |message: String| Err(InvalidRequest(message));
        if !is_token(&self.method) {
            return invalid(format!(
                "the method {:?} is not an HTTP method (letters, digits and !#$%&'*+-.^_`|~)",
                self.method
            ));
        }
        // A proxy strips the fragment before a filter sees the path.
        let allowed = |c: char| c.is_ascii_graphic() && c != '#';
        let asterisk = self.path == "*" && self.method == "OPTIONS";
        if !(self.path.starts_with('/') || asterisk) || !self.path.chars().all(allowed) {
            return invalid(format!(
                "the path {:?} must start with / (or be * for OPTIONS) and hold only visible ASCII characters without # (percent-encode the rest)",
                self.path
            ));
        }
        check_fields("request", &self.headers)?;
        check_fields("upstream", &self.upstream.headers)?;
        if !(100..=599).contains(&self.upstream.status) {
            return invalid(format!(
                "the upstream status {} is not an HTTP status (100 to 599)",
                self.upstream.status
            ));
        }
        Ok(())
    }

    pub fn get(path: &str) -> Self {
        Self {
            method: get(),
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
            upstream: UpstreamStub::default(),
            conf: String::new(),
            ticks: 0,
        }
    }
}

/// RFC 9110's token: the characters of a method or a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_fields(whose: &str, headers: &[(String, String)]) -> Result<(), InvalidRequest> {
    for (name, value) in headers {
        if !is_token(name) {
            return Err(InvalidRequest(format!(
                "the {whose} header name {name:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~; :method, :path and :status come from the method, path and upstream status; :authority is kiln.test, :scheme http)"
            )));
        }
        if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
            return Err(InvalidRequest(format!(
                "the {whose} header {name:?} has a control character in its value"
            )));
        }
    }
    Ok(())
}

/// Bounds on one trial; the plugin is untrusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialLimits {
    /// wasmtime fuel units (roughly one per instruction), on an engine that
    /// meters fuel ([`HostEngine::meters_fuel`]).
    pub fuel: u64,
    pub wall: Duration,
    pub memory_bytes: usize,
    /// Bytes of the plugin's data the host keeps for it over the run (logs,
    /// headers, bodies, properties, shared data, queues), counted as they
    /// are handed over.
    #[serde(default = "default_host_bytes")]
    pub host_bytes: usize,
}

fn default_host_bytes() -> usize {
    16 << 20
}

impl Default for TrialLimits {
    fn default() -> Self {
        Self {
            fuel: 500_000_000,
            wall: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            host_bytes: default_host_bytes(),
        }
    }
}

/// An HTTP message as the plugin left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// The request as forwarded upstream; `None` when answered locally.
    pub forwarded: Option<Message>,
    /// The response the plugin sent itself, if it did.
    pub local_response: Option<LocalResponse>,
    /// The upstream's response after the response callbacks.
    pub response: Option<Response>,
    pub logs: Vec<LogLine>,
    /// Microseconds: instantiation, start to the end of the exchange, and
    /// dropping the instance afterwards.
    pub instantiate_us: u64,
    pub exchange_us: u64,
    #[serde(default)]
    pub teardown_us: u64,
}

fn trap(e: wasmtime::Error, limits: &TrialLimits) -> HostError {
    if e.downcast_ref::<KeptTooMuch>().is_some() {
        return HostError::HostMemory(limits.host_bytes);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => HostError::OutOfFuel(limits.fuel),
        Some(Trap::Interrupt) => HostError::Timeout(limits.wall),
        _ => HostError::Trap(format!("{e:#}")),
    }
}

struct Run<'a> {
    store: Store<HostState>,
    instance: Instance,
    limits: &'a TrialLimits,
}

impl Run<'_> {
    /// Calls an export; `None` when the plugin does not export it.
    fn call(&mut self, name: &str, args: &[u32]) -> Result<Option<i32>, HostError> {
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let args: Vec<Val> = args.iter().map(|&a| Val::I32(a as i32)).collect();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        func.call(&mut self.store, &args, &mut results)
            .map_err(|e| trap(e, self.limits))?;
        Ok(results.first().and_then(Val::i32).or(Some(0)))
    }

    fn require(&mut self, name: &str, args: &[u32]) -> Result<i32, HostError> {
        self.call(name, args)?
            .ok_or_else(|| HostError::MissingExport(name.into()))
    }

    fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    fn answered(&mut self) -> bool {
        self.state().local_response.is_some()
    }

    /// Answers every HTTP call the plugin dispatched with the stub upstream.
    fn deliver_calls(&mut self, upstream: &UpstreamStub) -> Result<(), HostError> {
        while let Some(call) = self.state().pending_calls.pop_front() {
            let headers = upstream_headers(upstream);
            let n = headers.len() as u32;
            *self.state().map_mut(MapType::HttpCallResponseHeaders) = headers;
            self.state().buffers.insert(
                BufferType::HttpCallResponseBody as u32,
                upstream.body.clone().into_bytes(),
            );
            self.call(
                "proxy_on_http_call_response",
                &[call.context, call.token, n, upstream.body.len() as u32, 0],
            )?;
        }
        Ok(())
    }

    fn start(&mut self, request: &TrialRequest) -> Result<(), HostError> {
        self.call("_initialize", &[])?;
        self.require("proxy_on_context_create", &[ROOT_CONTEXT, 0])?;
        self.call("proxy_on_vm_start", &[ROOT_CONTEXT, 0])?;
        let conf_len = request.conf.len() as u32;
        if self.call("proxy_on_configure", &[ROOT_CONTEXT, conf_len])? == Some(0) {
            return Err(HostError::Trap(
                "the plugin refused its configuration (proxy_on_configure returned false)".into(),
            ));
        }
        for _ in 0..request.ticks {
            self.call("proxy_on_tick", &[ROOT_CONTEXT])?;
        }
        Ok(())
    }

    fn exchange(
        &mut self,
        request: &TrialRequest,
    ) -> Result<(Option<Message>, Option<Response>), HostError> {
        let pseudo = [
            (":method", request.method.as_str()),
            (":path", request.path.as_str()),
            (":authority", "kiln.test"),
            (":scheme", "http"),
        ];
        let headers = header_map(&pseudo, &request.headers);
        let n = headers.len() as u32;
        *self.state().map_mut(MapType::HttpRequestHeaders) = headers;
        self.state().current_context = HTTP_CONTEXT;
        self.require("proxy_on_context_create", &[HTTP_CONTEXT, ROOT_CONTEXT])?;
        let no_body = request.body.is_empty() as u32;
        self.call("proxy_on_request_headers", &[HTTP_CONTEXT, n, no_body])?;
        self.deliver_calls(&request.upstream)?;
        if self.answered() {
            return Ok((None, None));
        }
        if !request.body.is_empty() {
            self.deliver_body(
                BufferType::HttpRequestBody,
                "proxy_on_request_body",
                &request.body,
            )?;
            self.deliver_calls(&request.upstream)?;
            if self.answered() {
                return Ok((None, None));
            }
        }
        let forwarded = Message {
            headers: self.state().map_mut(MapType::HttpRequestHeaders).clone(),
            body: body_of(self.state(), BufferType::HttpRequestBody),
        };

        let upstream = &request.upstream;
        let headers = upstream_headers(upstream);
        let n = headers.len() as u32;
        *self.state().map_mut(MapType::HttpResponseHeaders) = headers;
        self.call(
            "proxy_on_response_headers",
            &[HTTP_CONTEXT, n, upstream.body.is_empty() as u32],
        )?;
        if !upstream.body.is_empty() && !self.answered() {
            self.deliver_body(
                BufferType::HttpResponseBody,
                "proxy_on_response_body",
                &upstream.body,
            )?;
        }
        self.deliver_calls(upstream)?;
        if self.answered() {
            return Ok((Some(forwarded), None));
        }
        let mut headers = self.state().map_mut(MapType::HttpResponseHeaders).clone();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(upstream.status);
        headers.retain(|(k, _)| k != ":status");
        let body = body_of(self.state(), BufferType::HttpResponseBody);
        Ok((
            Some(forwarded),
            Some(Response {
                status,
                headers,
                body,
            }),
        ))
    }

    /// Puts `body` in `buffer` and hands it to `callback` as the whole body.
    fn deliver_body(
        &mut self,
        buffer: BufferType,
        callback: &str,
        body: &str,
    ) -> Result<(), HostError> {
        self.state()
            .buffers
            .insert(buffer as u32, body.as_bytes().to_vec());
        self.call(callback, &[HTTP_CONTEXT, body.len() as u32, 1])?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), HostError> {
        self.call("proxy_on_log", &[HTTP_CONTEXT])?;
        self.call("proxy_on_done", &[HTTP_CONTEXT])?;
        self.call("proxy_on_delete", &[HTTP_CONTEXT])?;
        Ok(())
    }
}

/// A header map as the plugin sees it: the pseudo-headers, then `headers`
/// with lowercased names.
fn header_map(pseudo: &[(&str, &str)], headers: &[(String, String)]) -> Vec<(String, String)> {
    let pseudo = pseudo
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    let headers = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
    pseudo.chain(headers).collect()
}

/// The stub upstream's response headers, `:status` first.
fn upstream_headers(upstream: &UpstreamStub) -> Vec<(String, String)> {
    header_map(
        &[(":status", &upstream.status.to_string())],
        &upstream.headers,
    )
}

fn body_of(state: &HostState, buffer: BufferType) -> String {
    String::from_utf8_lossy(
        state
            .buffers
            .get(&(buffer as u32))
            .map_or(&[][..], Vec::as_slice),
    )
    .into_owned()
}

/// Instantiates `plugin` and runs one exchange through it.
pub fn run_trial(
    engine: &HostEngine,
    plugin: &Plugin,
    request: &TrialRequest,
    limits: &TrialLimits,
) -> Result<TrialResult, HostError> {
    let mut store = engine.store(
        |store_limits| {
            let mut state = HostState::new(store_limits, request.conf.clone().into_bytes());
            state.properties.method = request.method.clone();
            state.properties.path = request.path.clone();
            state
        },
        limits,
    )?;

    let started = Instant::now();
    let instance = plugin
        .instance_pre()
        .instantiate(&mut store)
        .map_err(|e| trap(e, limits))?;
    let instantiate_us = started.elapsed().as_micros() as u64;
    let mut run = Run {
        store,
        instance,
        limits,
    };
    let exchange_started = Instant::now();
    run.start(request)?;
    let (forwarded, response) = run.exchange(request)?;
    run.finish()?;
    let exchange_us = exchange_started.elapsed().as_micros() as u64;
    let teardown_started = Instant::now();
    let state = run.store.into_data();
    let teardown_us = teardown_started.elapsed().as_micros() as u64;
    Ok(TrialResult {
        forwarded,
        local_response: state.local_response,
        response,
        logs: state.logs,
        instantiate_us,
        exchange_us,
        teardown_us,
    })
}

/// Whether two builds of a plugin answer a fixed smoke request the same.
pub fn smoke_equivalent(
    engine: &HostEngine,
    a: &Plugin,
    b: &Plugin,
    conf: &str,
) -> Result<bool, HostError> {
    let mut request = TrialRequest::get("/kiln-smoke");
    request.conf = conf.into();
    let limits = TrialLimits::default();
    let (mut x, mut y) = (
        run_trial(engine, a, &request, &limits)?,
        run_trial(engine, b, &request, &limits)?,
    );
    for timed in [&mut x, &mut y] {
        (timed.instantiate_us, timed.exchange_us, timed.teardown_us) = (0, 0, 0);
    }
    Ok(x == y)
}

#[cfg(test)]
mod tests {
    use super::TrialRequest;

    fn refused(change: impl FnOnce(&mut TrialRequest)) -> String {
        let mut request = TrialRequest::get("/");
        change(&mut request);
        request.check().expect_err("refused").to_string()
    }

    #[test]
    fn requests_a_proxy_would_forward_are_accepted() {
        let mut request = TrialRequest::get("/a/b?c=d%20e");
        request.method = "PATCH".into();
        request.headers = vec![("x-h".into(), "v\twith tab, and ünïcode".into())];
        request.upstream.status = 599;
        request.check().unwrap();
        let mut options = TrialRequest::get("*");
        options.method = "OPTIONS".into();
        options.check().unwrap();
    }

    #[test]
    fn requests_no_proxy_would_forward_are_refused_with_what_is_wrong() {
        assert!(refused(|r| r.method = "G ET".into()).contains("\"G ET\""));
        assert!(refused(|r| r.method = String::new()).contains("method"));
        assert!(refused(|r| r.path = "admin".into()).contains("\"admin\""));
        assert!(refused(|r| r.path = "/a b".into()).contains("visible ASCII"));
        assert!(refused(|r| r.path = "/ä".into()).contains("percent-encode"));
        assert!(refused(|r| r.path = "/a#top".into()).contains("without #"));
        assert!(
            refused(|r| r.path = "*".into()).contains("OPTIONS"),
            "GET *"
        );
        let header = |name: &str, value: &str| vec![(name.to_owned(), value.to_owned())];
        assert!(refused(|r| r.headers = header(":authority", "x")).contains("kiln.test"));
        assert!(refused(|r| r.headers = header("a b", "x")).contains("\"a b\""));
        assert!(refused(|r| r.headers = header("x", "1\r\ny: 2")).contains("control character"));
        assert!(refused(|r| r.upstream.headers = header("x", "\0")).contains("upstream header"));
        assert!(refused(|r| r.upstream.status = 99).contains("99"));
        assert!(refused(|r| r.upstream.status = 600).contains("100 to 599"));
    }
}
