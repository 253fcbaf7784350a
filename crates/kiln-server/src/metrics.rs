//! Prometheus metrics: requests and their latency by route, builds by
//! state and the queue depth (read from the store at scrape time, so every
//! server of a cluster reports the same numbers), and histograms of how
//! long uploads waited for a worker and how long each build stage took
//! (observed by the server that handled the claim or the report: sum them
//! over the servers of a cluster).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kiln_domain::BuildState;
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

/// The stages a worker times (kiln-worker's pipeline, `stages_ms` of its
/// report), and `precompile`, which the server times. A report's other
/// names are ignored: a worker cannot grow the label set.
pub const BUILD_STAGES: [&str; 9] = [
    "download",
    "unpack",
    "dependencies",
    "compile",
    "check",
    "optimize",
    "preinit",
    "profile",
    "precompile",
];

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    builds: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    /// Seconds from an upload to the first claim of its build.
    queue_wait: Histogram,
    /// Seconds each stage of a succeeded build took, by stage.
    stage_duration: Family<StageLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let builds = Family::<StateLabels, Gauge>::default();
        let queue_depth = Gauge::default();
        // 0.1 s to about 27 min.
        let queue_wait = Histogram::new(exponential_buckets(0.1, 2.0, 15));
        // 10 ms to about 5.5 min (the default build timeout is 5 min).
        let stage_duration = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 16))
        });
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
        registry.register(
            "build_queue_wait_seconds",
            "Time from an upload to the first claim of its build",
            queue_wait.clone(),
        );
        registry.register(
            "build_stage_duration_seconds",
            "Time each stage of a succeeded build took",
            stage_duration.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            builds,
            queue_depth,
            queue_wait,
            stage_duration,
        }
    }

    /// A build was claimed for the first time, `waited` after its upload.
    pub fn observe_queue_wait(&self, waited: std::time::Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// A stage of a succeeded build took `took`; unknown stages are ignored.
    pub fn observe_stage(&self, stage: &str, took: std::time::Duration) {
        if BUILD_STAGES.contains(&stage) {
            self.stage_duration
                .get_or_create(&StageLabels {
                    stage: stage.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// The stages of a worker's report profile (`stages_ms`: name to
    /// milliseconds); anything else in it is ignored.
    pub fn observe_reported_stages(&self, profile: Option<&serde_json::Value>) {
        let Some(stages) = profile
            .and_then(|p| p.get("stages_ms"))
            .and_then(|s| s.as_object())
        else {
            return;
        };
        for (stage, ms) in stages {
            if let Some(ms) = ms.as_u64() {
                self.observe_stage(stage, std::time::Duration::from_millis(ms));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stages_and_queue_wait_are_histograms() {
        let metrics = Metrics::new();
        metrics.observe_queue_wait(Duration::from_millis(1500));
        metrics.observe_stage("precompile", Duration::from_millis(40));
        let profile = serde_json::json!({
            "stages_ms": {"compile": 9000, "check": 12, "made-up": 1, "download": "x"},
            "sandbox": "bubblewrap",
        });
        metrics.observe_reported_stages(Some(&profile));
        metrics.observe_reported_stages(None);
        let text = metrics.render();
        assert!(
            text.contains("kiln_build_queue_wait_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kiln_build_queue_wait_seconds_sum 1.5"),
            "{text}"
        );
        for stage in ["compile", "check", "precompile"] {
            let count = format!("kiln_build_stage_duration_seconds_count{{stage=\"{stage}\"}} 1");
            assert!(text.contains(&count), "{stage}: {text}");
        }
        assert!(text.contains("le=\"10.24\",stage=\"compile\"} 1"), "{text}");
        assert!(!text.contains("made-up"), "{text}");
        assert!(!text.contains("stage=\"download\""), "{text}");
    }
}
