//! Prometheus metrics: requests and their latency by route, builds by
//! state and the queue depth (read from the store at scrape time, so every
//! server of a cluster reports the same numbers).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kiln_domain::{BuildProfile, BuildState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    worker: String,
    state: String,
}

/// Stage names a worker may report that become label values; any other is
/// counted as `other`, so a worker cannot grow the label set.
const STAGES: [&str; 8] = [
    "download",
    "unpack",
    "dependencies",
    "compile",
    "check",
    "optimize",
    "preinit",
    "profile",
];

/// The server's Prometheus registry and its metrics, all named `kiln_…`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    builds: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    queue_wait: Histogram,
    stage_duration: Family<StageLabels, Histogram>,
    finished: Family<OutcomeLabels, Counter>,
    db_connections: Gauge,
    db_idle: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let builds = Family::<StateLabels, Gauge>::default();
        let queue_depth = Gauge::default();
        // From a tenth of a second to about an hour and a half.
        let queue_wait = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        let stage_duration = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 16))
        });
        let finished = Family::<OutcomeLabels, Counter>::default();
        let (db_connections, db_idle) = (Gauge::default(), Gauge::default());
        registry.register(
            "queue_wait_seconds",
            "How long builds waited in the queue before a worker claimed them",
            queue_wait.clone(),
        );
        registry.register(
            "build_stage_duration_seconds",
            "How long each stage of a build took, as its worker reported",
            stage_duration.clone(),
        );
        registry.register(
            "builds_finished",
            "Builds this server saw end, by the worker that ran them and their state",
            finished.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Connections the database pool holds",
            db_connections.clone(),
        );
        registry.register(
            "db_pool_idle_connections",
            "Connections of the pool that are idle",
            db_idle.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register("builds", "Builds by state", builds.clone());
        registry.register(
            "queue_depth",
            "Builds waiting for a worker",
            queue_depth.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            builds,
            queue_depth,
            queue_wait,
            stage_duration,
            finished,
            db_connections,
            db_idle,
        }
    }

    /// A build was claimed after waiting `seconds` in the queue.
    pub fn claimed(&self, seconds: f64) {
        self.queue_wait.observe(seconds.max(0.0));
    }

    /// A build ended `state` on `worker`, with the stage timings it reported.
    pub fn finished(&self, worker: &str, state: BuildState, profile: Option<&BuildProfile>) {
        self.finished
            .get_or_create(&OutcomeLabels {
                worker: worker.to_owned(),
                state: state.as_str().into(),
            })
            .inc();
        let stages = profile.map(|p| &p.stages_ms);
        for (stage, &ms) in stages.into_iter().flatten() {
            let stage = STAGES
                .iter()
                .find(|s| **s == stage)
                .copied()
                .unwrap_or("other");
            self.stage_duration
                .get_or_create(&StageLabels {
                    stage: stage.into(),
                })
                .observe(ms as f64 / 1000.0);
        }
    }

    /// The database pool's connections, all and idle.
    pub fn set_pool(&self, connections: u32, idle: usize) {
        self.db_connections.set(i64::from(connections));
        self.db_idle.set(idle as i64);
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let (method, route) = (method.to_owned(), route.to_owned());
        self.requests
            .get_or_create(&RequestLabels {
                method: method.clone(),
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    /// Sets the build gauges from a count per state.
    pub fn set_builds(&self, counts: &[(BuildState, i64)]) {
        for state in BuildState::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.builds
                .get_or_create(&StateLabels {
                    state: state.as_str().into(),
                })
                .set(n);
            if state == BuildState::Queued {
                self.queue_depth.set(n);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Counts every request under its route template (never the raw path, so
/// ids do not explode the label set).
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
