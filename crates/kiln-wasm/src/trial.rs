//! Trying a plugin on one HTTP exchange: a [`Scenario`] of one request,
//! whose stub upstream is both the origin's response and the answer of
//! every HTTP call out. The result says what the plugin did, with its logs.

use crate::host::{HostEngine, HostError, InstanceLimits, LocalResponse, LogLine, Plugin};
use crate::request::{InvalidRequest, UpstreamStub, check_fields, check_request, check_status};
use crate::scenario::{ANY_CLUSTER, Scenario, ScenarioRequest, ScenarioResult, run_scenario};
pub use crate::scenario::{Message, Response};
use serde::{Deserialize, Serialize};

/// One HTTP request to try a plugin on, with the stub upstream that
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialRequest {
    /// The HTTP method (default `GET`).
    #[serde(default = "get")]
    pub method: String,
    /// The path and query (default `/`).
    #[serde(default = "root")]
    pub path: String,
    /// Request headers; `host` becomes `:authority`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The request body.
    #[serde(default)]
    pub body: String,
    /// The origin's response, and the answer of every HTTP call out.
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

impl TrialRequest {
    /// Refuses what a proxy would refuse before any filter sees it: a
    /// method or header name that is not an HTTP token, a path that is not
    /// an origin path, a control character in a header value, a status
    /// outside 100–599. A plugin is tried on requests it can meet.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        check_request(&self.method, &self.path, &self.headers)?;
        check_fields("upstream", &self.upstream.headers)?;
        check_status("upstream", self.upstream.status)
    }

    /// The scenario this request is: one request, whose stub upstream
    /// also answers every call out, whatever its cluster.
    pub fn scenario(&self) -> Scenario {
        Scenario {
            conf: self.conf.clone(),
            requests: vec![ScenarioRequest {
                method: self.method.clone(),
                path: self.path.clone(),
                headers: self.headers.clone(),
                body: self.body.clone(),
                origin: self.upstream.clone(),
                ..ScenarioRequest::get("/")
            }],
            clusters: [(ANY_CLUSTER.to_owned(), self.upstream.clone())].into(),
            ticks: self.ticks,
            ..Scenario::default()
        }
    }

    /// A `GET` of `path` without headers, body or configuration, which
    /// the upstream answers 200 with no body.
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

/// Bounds on one trial: those of the instance it runs in.
pub type TrialLimits = InstanceLimits;

/// What one trial came to, with the plugin's logs and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// The request as forwarded upstream; `None` when answered locally.
    pub forwarded: Option<Message>,
    /// The response the plugin sent itself, if it did.
    pub local_response: Option<LocalResponse>,
    /// What the client got after the response callbacks: the upstream's
    /// response, or the local one.
    pub response: Option<Response>,
    /// Everything the plugin logged, in order: at start, at ticks and
    /// during the exchange.
    pub logs: Vec<LogLine>,
    /// Microseconds to instantiate the plugin.
    pub instantiate_us: u64,
    /// Microseconds from the plugin's start to the end of the exchange.
    pub exchange_us: u64,
    /// Microseconds to drop the instance afterwards.
    #[serde(default)]
    pub teardown_us: u64,
}

/// Instantiates `plugin` and runs one exchange through it; a trap or a
/// limit is an error.
pub fn run_trial(
    engine: &HostEngine,
    plugin: &Plugin,
    request: &TrialRequest,
    limits: &TrialLimits,
) -> Result<TrialResult, HostError> {
    let (result, error) = run_scenario(engine, plugin, &request.scenario(), limits)?;
    match error {
        Some(error) => Err(error),
        None => Ok(result.into()),
    }
}

impl From<ScenarioResult> for TrialResult {
    /// The first request of a scenario, with every log line in order.
    fn from(result: ScenarioResult) -> Self {
        let mut logs = result.logs;
        let exchange = result.exchanges.into_iter().next().unwrap_or_default();
        logs.extend(exchange.logs);
        Self {
            forwarded: exchange.forwarded,
            local_response: exchange.local_response,
            response: exchange.response,
            logs,
            instantiate_us: result.instantiate_us,
            exchange_us: result.exchange_us,
            teardown_us: result.teardown_us,
        }
    }
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
        assert!(refused(|r| r.headers = header(":authority", "x")).contains("Host header"));
        assert!(refused(|r| r.headers = header("a b", "x")).contains("\"a b\""));
        assert!(refused(|r| r.headers = header("x", "1\r\ny: 2")).contains("control character"));
        assert!(refused(|r| r.upstream.headers = header("x", "\0")).contains("upstream header"));
        assert!(refused(|r| r.upstream.status = 99).contains("99"));
        assert!(refused(|r| r.upstream.status = 600).contains("100 to 599"));
    }
}
