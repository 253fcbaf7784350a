//! A scenario: requests in a row through one running plugin, as Envoy
//! runs them. One instance serves every request, so shared data, metrics
//! and timers carry from one to the next; time passes between requests
//! only when the scenario says so, and the root context's timer ticks as
//! it passes. Each request goes through the request callbacks, is held,
//! answered locally or forwarded to its origin response, and the response
//! (the origin's or a local reply) goes through the response callbacks.
//! A callback's answer counts: a request paused and never resumed stays
//! paused, and the client gets what Envoy sends when the stream times out.
//! Bodies arrive in chunks ending with `end_of_stream`; a body paused
//! (`Pause`) is buffered until the plugin lets it go. Every HTTP call out is
//! answered by the scenario's stub for its cluster.
//!
//! The whole scenario shares one set of limits (fuel, time, memory, the
//! bytes the host keeps): the plugin is untrusted.

use crate::abi::{Action, BufferType, MapType};
use crate::host::InstanceLimits;
use crate::host::{
    CallOut, HostEngine, HostError, HostState, LocalResponse, LogLine, Metric, Plugin,
};
use crate::request::{InvalidRequest, UpstreamStub, check_fields, check_request, check_status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use wasmtime::{Instance, Store, StoreLimits, Val};

const ROOT_CONTEXT: u32 = 1;
/// The most requests one scenario runs.
pub const MAX_REQUESTS: usize = 100;
/// The most timer ticks one scenario delivers; past it, time still passes
/// but the timer no longer fires.
pub const MAX_TICKS: u32 = 10_000;
/// Envoy's default `stream_idle_timeout`: how long a held request waits.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 300_000;
/// The cluster name that answers a call out to any cluster not listed.
pub const ANY_CLUSTER: &str = "*";

/// Requests in a row through one plugin, with what answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The plugin configuration (a version's `conf`).
    #[serde(default)]
    pub conf: String,
    /// The requests, run in order through the same instance; 1 to
    /// [`MAX_REQUESTS`].
    pub requests: Vec<ScenarioRequest>,
    /// The answer of an HTTP call out, by cluster name; a call to a cluster
    /// not listed is refused (`BadArgument`), as Envoy refuses a cluster it
    /// does not know, unless `"*"` is listed: it answers any other.
    #[serde(default)]
    pub clusters: BTreeMap<String, UpstreamStub>,
    /// Timer ticks delivered to the root context right after it starts,
    /// whatever its period.
    #[serde(default)]
    pub ticks: u32,
    /// How long a held request waits before the proxy answers it with
    /// 504 `stream timeout` (Envoy's `stream_idle_timeout`, 5 minutes by
    /// default); the clock moves on by that much.
    #[serde(default = "default_idle_timeout")]
    pub stream_idle_timeout_ms: u64,
    /// Bodies are delivered in chunks of this many bytes (0: each in one
    /// chunk, as Envoy sees a small body).
    #[serde(default)]
    pub body_chunk_bytes: usize,
}

fn default_idle_timeout() -> u64 {
    DEFAULT_STREAM_IDLE_TIMEOUT_MS
}

/// One request of a scenario, and the origin's response to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioRequest {
    /// The HTTP method (default `GET`), which becomes `:method`.
    #[serde(default = "get")]
    pub method: String,
    /// The path and query (default `/`), which becomes `:path`.
    #[serde(default = "root")]
    pub path: String,
    /// Request headers; `host` becomes `:authority`, as Envoy does.
    #[serde(default)]
    #[schema(schema_with = crate::request::header_pairs)]
    pub headers: Vec<(String, String)>,
    /// The request body, delivered in chunks of the scenario's
    /// `body_chunk_bytes`.
    #[serde(default)]
    pub body: String,
    /// The origin's response, if the request reaches it.
    #[serde(default, alias = "upstream")]
    pub origin: UpstreamStub,
    /// Answers of call outs for this request only, by cluster, before the
    /// scenario's.
    #[serde(default)]
    pub clusters: BTreeMap<String, UpstreamStub>,
    /// Milliseconds that pass before this request (the timer ticks).
    #[serde(default)]
    pub after_ms: u64,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

impl ScenarioRequest {
    /// A `GET` of `path` without headers or body, which the origin
    /// answers 200 with no body.
    pub fn get(path: &str) -> Self {
        Self {
            method: get(),
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
            origin: UpstreamStub::default(),
            clusters: BTreeMap::new(),
            after_ms: 0,
        }
    }
}

impl Scenario {
    /// Refuses what no proxy would hand a filter, in any request, and a
    /// scenario past kiln's bounds.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        if self.requests.is_empty() || self.requests.len() > MAX_REQUESTS {
            return Err(InvalidRequest(format!(
                "a scenario holds 1 to {MAX_REQUESTS} requests, not {}",
                self.requests.len()
            )));
        }
        let stubs = |clusters: &BTreeMap<String, UpstreamStub>| {
            for (name, stub) in clusters {
                check_fields(&format!("cluster {name:?}"), &stub.headers)?;
                check_status(&format!("cluster {name:?}"), stub.status)?;
            }
            Ok(())
        };
        stubs(&self.clusters)?;
        for (i, r) in self.requests.iter().enumerate() {
            check_request(&r.method, &r.path, &r.headers)
                .map_err(|e| InvalidRequest(format!("request {}: {}", i + 1, e.0)))?;
            check_fields("origin", &r.origin.headers)?;
            check_status("origin", r.origin.status)?;
            stubs(&r.clusters)?;
        }
        Ok(())
    }
}

/// An HTTP message as the plugin left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its header map, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Its body, as the plugin let it through (invalid UTF-8 replaced).
    pub body: String,
}

/// A response as the client gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The HTTP status the client got.
    pub status: u32,
    /// The headers, without `:status`.
    pub headers: Vec<(String, String)>,
    /// The body (invalid UTF-8 replaced).
    pub body: String,
}

/// Which part of a stream the plugin kept paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// The request never reached the origin: the client got 504 `stream
    /// timeout` after the stream idle timeout.
    Request,
    /// The origin's response never reached the client, who got 504
    /// `stream timeout` after the stream idle timeout.
    Response,
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Exchange {
    /// The request as it reached the origin; `None` when it did not.
    pub forwarded: Option<Message>,
    /// The response the plugin sent itself, as it sent it.
    pub local_response: Option<LocalResponse>,
    /// What the client got, after the response callbacks.
    pub response: Option<Response>,
    /// Set when the plugin kept the stream paused and never resumed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// The HTTP calls out the plugin made during this request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallOut>,
    /// What the plugin logged during this request.
    pub logs: Vec<LogLine>,
}

/// Where a plugin failed: a trap or a limit, in which callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The export that was running, e.g. `proxy_on_request_headers`.
    pub callback: String,
    /// The request (from 0) it failed in; `None` outside one.
    pub request: Option<usize>,
    /// What stopped it: the error's text.
    pub message: String,
}

/// What a scenario came to: each request's exchange, what the plugin
/// kept over the run, and how long its parts took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// One per request run, the one that failed included.
    pub exchanges: Vec<Exchange>,
    /// What the plugin logged outside any request: at start, at ticks.
    pub logs: Vec<LogLine>,
    /// The metrics the plugin defined, as they stand at the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    /// Shared data at the end, by key (values as text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_data: BTreeMap<String, String>,
    /// Calls out made outside any request (from the root context).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallOut>,
    /// Timer ticks delivered.
    #[serde(default)]
    pub ticks: u32,
    /// Set when the plugin trapped or hit a limit; the scenario stopped there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Microseconds to instantiate the plugin.
    pub instantiate_us: u64,
    /// Microseconds from the plugin's start to the end of the last request
    /// run.
    pub exchange_us: u64,
    /// Microseconds to drop the instance afterwards.
    #[serde(default)]
    pub teardown_us: u64,
}

/// A stub answer with `:status` first and a `content-length` when it has
/// a body and says nothing of its length, as an HTTP/1.1 origin sends it.
fn stub_headers(stub: &UpstreamStub) -> Vec<(String, String)> {
    let mut headers = header_map(&[(":status", &stub.status.to_string())], &stub.headers);
    let framed = headers
        .iter()
        .any(|(k, _)| k == "content-length" || k == "transfer-encoding");
    if !stub.body.is_empty() && !framed {
        headers.push(("content-length".into(), stub.body.len().to_string()));
    }
    headers
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

fn body_of(state: &HostState, buffer: BufferType) -> Vec<u8> {
    state
        .buffers
        .get(&(buffer as u32))
        .cloned()
        .unwrap_or_default()
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The headers of a local reply as Envoy sends it: the plugin's, with the
/// body's length and a `text/plain` type when the plugin gave none.
fn local_reply_headers(local: &LocalResponse) -> Vec<(String, String)> {
    let mut headers = header_map(&[(":status", &local.status.to_string())], &local.headers);
    if !local.body.is_empty() {
        if !headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type".into(), "text/plain".into()));
        }
        headers.retain(|(k, _)| k != "content-length");
        headers.push(("content-length".into(), local.body.len().to_string()));
    }
    headers
}

struct Run<'a> {
    store: Store<HostState>,
    instance: Instance,
    limits: &'a InstanceLimits,
    scenario: &'a Scenario,
    /// The export running, for a failure's report.
    callback: &'static str,
    /// Calls out delivered since the last request ended.
    calls: Vec<CallOut>,
    /// The request being run, whose own cluster stubs come first.
    current: Option<usize>,
    ticks: u32,
}

/// How a stream's direction went through the plugin.
enum Flow {
    /// It went on, with the body it let through.
    Passed(Vec<u8>),
    /// The plugin sent a local response.
    Answered,
    /// The plugin kept it paused.
    Held,
}

impl Run<'_> {
    /// Calls an export; `None` when the plugin does not export it.
    fn call(&mut self, name: &'static str, args: &[u32]) -> Result<Option<i32>, HostError> {
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        self.callback = name;
        let args: Vec<Val> = args.iter().map(|&a| Val::I32(a as i32)).collect();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        func.call(&mut self.store, &args, &mut results)
            .map_err(|e| HostError::from_instance(e, self.limits))?;
        Ok(results.first().and_then(Val::i32).or(Some(0)))
    }

    fn require(&mut self, name: &'static str, args: &[u32]) -> Result<i32, HostError> {
        self.call(name, args)?
            .ok_or_else(|| HostError::MissingExport(name.into()))
    }

    fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Answers every HTTP call out the plugin dispatched, and those it
    /// dispatches while answered, with the stub for its cluster.
    fn deliver_calls(&mut self) -> Result<(), HostError> {
        let scenario = self.scenario;
        let request = self.current.map(|i| &scenario.requests[i]);
        while let Some(pending) = self.state().pending_calls.pop_front() {
            let cluster = &pending.call.cluster;
            let stub = request
                .and_then(|r| r.clusters.get(cluster))
                .or_else(|| self.scenario.clusters.get(cluster))
                .or_else(|| request.and_then(|r| r.clusters.get(ANY_CLUSTER)))
                .or_else(|| self.scenario.clusters.get(ANY_CLUSTER))
                .cloned()
                .unwrap_or_default();
            self.calls.push(pending.call);
            let headers = stub_headers(&stub);
            let n = headers.len() as u32;
            *self.state().map_mut(MapType::HttpCallResponseHeaders) = headers;
            self.state().buffers.insert(
                BufferType::HttpCallResponseBody as u32,
                stub.body.clone().into_bytes(),
            );
            let saved = std::mem::replace(&mut self.state().current_context, pending.context);
            self.call(
                "proxy_on_http_call_response",
                &[pending.context, pending.token, n, stub.body.len() as u32, 0],
            )?;
            self.state().current_context = saved;
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), HostError> {
        self.call("_initialize", &[])?;
        self.state().current_context = ROOT_CONTEXT;
        self.require("proxy_on_context_create", &[ROOT_CONTEXT, 0])?;
        self.call("proxy_on_vm_start", &[ROOT_CONTEXT, 0])?;
        let conf_len = self.scenario.conf.len() as u32;
        if self.call("proxy_on_configure", &[ROOT_CONTEXT, conf_len])? == Some(0) {
            return Err(HostError::Trap(
                "the plugin refused its configuration (proxy_on_configure returned false)".into(),
            ));
        }
        self.deliver_calls()?;
        for _ in 0..self.scenario.ticks {
            self.tick()?;
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), HostError> {
        if self.ticks >= MAX_TICKS {
            return Ok(());
        }
        self.ticks += 1;
        self.state().current_context = ROOT_CONTEXT;
        self.call("proxy_on_tick", &[ROOT_CONTEXT])?;
        self.deliver_calls()
    }

    /// Moves the clock on by `ms`, firing the root context's timer as it
    /// comes due.
    fn advance(&mut self, ms: u64) -> Result<(), HostError> {
        let target = self
            .state()
            .now_ns
            .saturating_add(ms.saturating_mul(1_000_000));
        while let Some(due) = self.state().next_tick_ns.filter(|&due| due <= target) {
            if self.ticks >= MAX_TICKS {
                break;
            }
            let period = u64::from(self.state().tick_period_ms) * 1_000_000;
            let state = self.state();
            state.now_ns = due;
            state.next_tick_ns = Some(due.saturating_add(period.max(1)));
            self.tick()?;
        }
        self.state().now_ns = target;
        Ok(())
    }

    /// Runs one direction's body through its callback in chunks; `held`
    /// says whether the headers were held, and is cleared when a body
    /// callback lets the stream go on.
    fn body(
        &mut self,
        context: u32,
        buffer: BufferType,
        callback: &'static str,
        body: &str,
        held: &mut bool,
    ) -> Result<Flow, HostError> {
        let mut passed = Vec::new();
        let mut buffered: Vec<u8> = Vec::new();
        let size = match self.scenario.body_chunk_bytes {
            0 => body.len().max(1),
            n => n,
        };
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            buffered.extend_from_slice(chunk);
            self.state().buffers.insert(buffer as u32, buffered.clone());
            self.state().continued = false;
            let action = self.call(callback, &[context, buffered.len() as u32, end as u32])?;
            self.deliver_calls()?;
            if self.state().local_response.is_some() {
                return Ok(Flow::Answered);
            }
            // What the plugin left in the buffer is what goes on.
            let now = body_of(self.state(), buffer);
            if action != Some(Action::Pause as i32) || self.state().continued {
                *held = false;
                passed.extend(now);
                buffered.clear();
            } else {
                buffered = now;
            }
        }
        if *held || !buffered.is_empty() {
            return Ok(Flow::Held);
        }
        Ok(Flow::Passed(passed))
    }

    /// One direction's headers through `callback`: whether they are held.
    fn headers(
        &mut self,
        context: u32,
        callback: &'static str,
        count: usize,
        end_of_stream: bool,
    ) -> Result<bool, HostError> {
        self.state().continued = false;
        let action = self.call(callback, &[context, count as u32, end_of_stream as u32])?;
        self.deliver_calls()?;
        Ok(action == Some(Action::Pause as i32) && !self.state().continued)
    }

    /// The request's direction: headers, then the body in chunks.
    fn request(
        &mut self,
        context: u32,
        index: usize,
        request: &ScenarioRequest,
    ) -> Result<Flow, HostError> {
        let host = request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or("kiln.test", |(_, v)| v.as_str())
            .to_owned();
        let request_id = format!("00000000-0000-4000-8000-{:012}", index + 1);
        let mut headers = header_map(
            &[
                (":authority", &host),
                (":path", &request.path),
                (":method", &request.method),
                (":scheme", "http"),
            ],
            &request
                .headers
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let has = |headers: &[(String, String)], name: &str| headers.iter().any(|(k, _)| k == name);
        if !request.body.is_empty() && !has(&headers, "content-length") {
            headers.push(("content-length".into(), request.body.len().to_string()));
        }
        // What Envoy's connection manager adds before any filter runs.
        for (name, value) in [("x-forwarded-proto", "http"), ("x-request-id", &request_id)] {
            if !has(&headers, name) {
                headers.push((name.into(), value.into()));
            }
        }
        let n = headers.len();
        let start_ns = self.state().now_ns;
        let state = self.state();
        *state.map_mut(MapType::HttpRequestHeaders) = headers;
        state.maps.remove(&(MapType::HttpResponseHeaders as u32));
        state.buffers.clear();
        state.stream = crate::host::StreamInfo {
            method: request.method.clone(),
            path: request.path.clone(),
            host,
            request_id,
            body_bytes: request.body.len(),
            connection_id: index as u64 + 1,
            start_ns,
            code_details: String::new(),
        };
        state.current_context = context;
        self.require("proxy_on_context_create", &[context, ROOT_CONTEXT])?;
        let no_body = request.body.is_empty();
        let mut held = self.headers(context, "proxy_on_request_headers", n, no_body)?;
        if self.state().local_response.is_some() {
            return Ok(Flow::Answered);
        }
        if no_body {
            return Ok(if held {
                Flow::Held
            } else {
                Flow::Passed(Vec::new())
            });
        }
        self.body(
            context,
            BufferType::HttpRequestBody,
            "proxy_on_request_body",
            &request.body,
            &mut held,
        )
    }

    /// The response's direction for the origin's answer.
    fn response(&mut self, context: u32, request: &ScenarioRequest) -> Result<Flow, HostError> {
        let origin = &request.origin;
        let headers = stub_headers(origin);
        let n = headers.len();
        *self.state().map_mut(MapType::HttpResponseHeaders) = headers;
        self.state().stream.code_details = "via_upstream".into();
        let no_body = origin.body.is_empty();
        let mut held = self.headers(context, "proxy_on_response_headers", n, no_body)?;
        if self.state().local_response.is_some() {
            return Ok(Flow::Answered);
        }
        if no_body {
            return Ok(if held {
                Flow::Held
            } else {
                Flow::Passed(Vec::new())
            });
        }
        self.body(
            context,
            BufferType::HttpResponseBody,
            "proxy_on_response_body",
            &origin.body,
            &mut held,
        )
    }

    /// A local reply (the plugin's, or the proxy's own) goes through the
    /// response callbacks like any response, as in Envoy.
    fn local_reply(
        &mut self,
        context: u32,
        local: &LocalResponse,
        details: &str,
    ) -> Result<Response, HostError> {
        let headers = local_reply_headers(local);
        let n = headers.len() as u32;
        *self.state().map_mut(MapType::HttpResponseHeaders) = headers;
        self.state().stream.code_details = details.into();
        let no_body = local.body.is_empty();
        self.call("proxy_on_response_headers", &[context, n, no_body as u32])?;
        self.deliver_calls()?;
        self.state().buffers.insert(
            BufferType::HttpResponseBody as u32,
            local.body.clone().into_bytes(),
        );
        if !no_body {
            self.call(
                "proxy_on_response_body",
                &[context, local.body.len() as u32, 1],
            )?;
            self.deliver_calls()?;
        }
        Ok(self.client_response(local.status))
    }

    /// The response as it stands, as the client gets it.
    fn client_response(&mut self, fallback: u32) -> Response {
        let mut headers = self.state().map_mut(MapType::HttpResponseHeaders).clone();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(fallback);
        headers.retain(|(k, _)| k != ":status");
        let body = text(body_of(self.state(), BufferType::HttpResponseBody));
        Response {
            status,
            headers,
            body,
        }
    }

    /// What Envoy answers a stream held past its idle timeout.
    fn stream_timeout(&mut self, context: u32, exchange: &mut Exchange) -> Result<(), HostError> {
        let timeout = LocalResponse {
            status: 504,
            headers: Vec::new(),
            body: "stream timeout".into(),
        };
        self.advance(self.scenario.stream_idle_timeout_ms)?;
        self.state().current_context = context;
        exchange.response = Some(self.local_reply(context, &timeout, "stream_idle_timeout")?);
        Ok(())
    }

    fn exchange(
        &mut self,
        index: usize,
        request: &ScenarioRequest,
        exchange: &mut Exchange,
    ) -> Result<(), HostError> {
        let context = ROOT_CONTEXT + 1 + index as u32;
        match self.request(context, index, request)? {
            Flow::Answered => {
                let local = self.state().local_response.take().expect("answered");
                exchange.response = Some(self.local_reply(context, &local, "via_wasm")?);
                exchange.local_response = Some(local);
            }
            Flow::Held => {
                exchange.held = Some(Held::Request);
                self.stream_timeout(context, exchange)?;
            }
            Flow::Passed(body) => {
                exchange.forwarded = Some(Message {
                    headers: self.state().map_mut(MapType::HttpRequestHeaders).clone(),
                    body: text(body),
                });
                match self.response(context, request)? {
                    Flow::Answered => {
                        // It replaces the origin's response as it is.
                        let local = self.state().local_response.take().expect("answered");
                        exchange.response = Some(Response {
                            status: local.status,
                            headers: local_reply_headers(&local)
                                .into_iter()
                                .filter(|(k, _)| k != ":status")
                                .collect(),
                            body: local.body.clone(),
                        });
                        exchange.local_response = Some(local);
                    }
                    Flow::Held => {
                        exchange.held = Some(Held::Response);
                        self.stream_timeout(context, exchange)?;
                    }
                    Flow::Passed(body) => {
                        self.state()
                            .buffers
                            .insert(BufferType::HttpResponseBody as u32, body);
                        exchange.response = Some(self.client_response(request.origin.status));
                    }
                }
            }
        }
        self.state().local_response = None;
        self.call("proxy_on_log", &[context])?;
        self.call("proxy_on_done", &[context])?;
        self.call("proxy_on_delete", &[context])?;
        self.state().current_context = ROOT_CONTEXT;
        Ok(())
    }
}

/// Instantiates `plugin` once and runs the scenario's requests through it.
/// A trap or a limit stops the scenario and is reported in the result's
/// `failure`, with what the plugin did and logged until then; the error is
/// given too, for callers that treat it as one.
pub fn run_scenario(
    engine: &HostEngine,
    plugin: &Plugin,
    scenario: &Scenario,
    limits: &InstanceLimits,
) -> Result<(ScenarioResult, Option<HostError>), HostError> {
    let mut store = engine.store(
        |store_limits| scenario_state(scenario, store_limits),
        limits,
    )?;
    let started = Instant::now();
    let instance = plugin
        .instance_pre()
        .instantiate(&mut store)
        .map_err(|e| HostError::from_instance(e, limits))?;
    let instantiate_us = started.elapsed().as_micros() as u64;
    let mut run = Run {
        store,
        instance,
        limits,
        scenario,
        callback: "_initialize",
        calls: Vec::new(),
        current: None,
        ticks: 0,
    };
    let exchange_started = Instant::now();
    let mut transcript = Transcript::default();
    let stopped = run.run_all(&mut transcript);
    let exchange_us = exchange_started.elapsed().as_micros() as u64;
    run.finish(transcript, stopped, instantiate_us, exchange_us)
}

/// The host's state for a scenario: its configuration, and the clusters
/// its calls out may name (any, when it lists `"*"`).
fn scenario_state(scenario: &Scenario, store_limits: StoreLimits) -> HostState {
    let mut state = HostState::new(store_limits, scenario.conf.clone().into_bytes());
    let mut names: BTreeSet<String> = scenario.clusters.keys().cloned().collect();
    for request in &scenario.requests {
        names.extend(request.clusters.keys().cloned());
    }
    state.clusters = (!names.contains(ANY_CLUSTER)).then_some(names);
    state
}

/// What a scenario's requests came to so far: one exchange per request
/// run, the lines logged outside any request, and how many of the
/// plugin's log lines have been handed to one or the other.
#[derive(Default)]
struct Transcript {
    exchanges: Vec<Exchange>,
    outside: Vec<LogLine>,
    logged: usize,
}

/// Where a run stopped: the error, and the request (from 0) it stopped in.
type Stop = (HostError, Option<usize>);

impl Run<'_> {
    /// Starts the plugin, then runs each request after the time it waits;
    /// the first error stops the run.
    fn run_all(&mut self, transcript: &mut Transcript) -> Option<Stop> {
        if let Err(e) = self.start() {
            return Some((e, None));
        }
        let scenario = self.scenario;
        for (index, request) in scenario.requests.iter().enumerate() {
            if let Err(e) = self.advance(request.after_ms) {
                return Some((e, None));
            }
            if let Err(e) = self.run_request(index, request, transcript) {
                return Some((e, Some(index)));
            }
        }
        None
    }

    /// Runs one request into a new exchange, with the log lines and calls
    /// out it caused; what was logged before it was logged outside.
    fn run_request(
        &mut self,
        index: usize,
        request: &ScenarioRequest,
        transcript: &mut Transcript,
    ) -> Result<(), HostError> {
        let logs = &self.state().logs;
        transcript
            .outside
            .extend_from_slice(&logs[transcript.logged..]);
        transcript.logged = logs.len();
        let mut exchange = Exchange::default();
        self.current = Some(index);
        let result = self.exchange(index, request, &mut exchange);
        self.current = None;
        let logs = &self.store.data().logs;
        exchange.logs = logs[transcript.logged..].to_vec();
        transcript.logged = logs.len();
        exchange.calls = std::mem::take(&mut self.calls);
        transcript.exchanges.push(exchange);
        result
    }

    /// Drops the instance (timed) and says what the run came to. A stop
    /// that is not the plugin's fault is the host's error, returned as one.
    fn finish(
        mut self,
        mut transcript: Transcript,
        stopped: Option<Stop>,
        instantiate_us: u64,
        exchange_us: u64,
    ) -> Result<(ScenarioResult, Option<HostError>), HostError> {
        let callback = self.callback;
        let calls = std::mem::take(&mut self.calls);
        let ticks = self.ticks;
        let teardown_started = Instant::now();
        let state = self.store.into_data();
        let teardown_us = teardown_started.elapsed().as_micros() as u64;
        let logs = &state.logs;
        let unread = transcript.logged.min(logs.len());
        transcript.outside.extend_from_slice(&logs[unread..]);
        let (failure, error) = failure(callback, stopped)?;
        let shared_data = state
            .shared_data
            .into_iter()
            .map(|(k, (v, _))| (k, text(v)))
            .collect();
        Ok((
            ScenarioResult {
                exchanges: transcript.exchanges,
                logs: transcript.outside,
                metrics: state.metrics,
                shared_data,
                calls,
                ticks,
                failure,
                instantiate_us,
                exchange_us,
                teardown_us,
            },
            error,
        ))
    }
}

/// The failure a stopped run reports, in `callback`, with its error; an
/// error that is not the plugin's fault is returned as the host's.
fn failure(
    callback: &str,
    stopped: Option<Stop>,
) -> Result<(Option<Failure>, Option<HostError>), HostError> {
    match stopped {
        None => Ok((None, None)),
        Some((e, _)) if !e.is_plugin_fault() => Err(e),
        Some((e, request)) => Ok((
            Some(Failure {
                callback: callback.into(),
                request,
                message: e.to_string(),
            }),
            Some(e),
        )),
    }
}
