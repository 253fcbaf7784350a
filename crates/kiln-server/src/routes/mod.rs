//! The router: one module per resource, each handler extracts, calls the
//! store and maps the result.

pub mod applications;
pub mod builds;
pub mod channels;
pub mod content;
pub mod follow;
pub mod internal;
pub mod ops;
pub mod registry;
pub mod trial;
pub mod versions;
pub mod web;

use crate::AppState;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::upload::{FORM_OVERHEAD_BYTES, refuse_declared_oversize};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use std::time::Duration;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// No request may take longer than this, so draining on shutdown ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The whole API with its middleware: request ids, tracing, metrics, a
/// 120 s timeout, and JSON answers for unknown paths and methods.
pub fn router(state: AppState) -> Router {
    let config = &state.config;
    Router::new()
        .merge(public_api(config))
        .merge(worker_api(config))
        .merge(operations())
        .merge(registry_api())
        .merge(web::router())
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn(crate::error::log_internal_errors))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Every request gets an id (or keeps the one a proxy gave it): the
        // answer carries it in x-request-id and every log line of the
        // request is in its span, so "internal error" can be found.
        .layer(PropagateRequestIdLayer::x_request_id())
        // A failure is logged once, with its cause, by log_internal_errors.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// `routes` with bodies over `limit` bytes refused: from their
/// `Content-Length` before they are read, or while they stream.
fn size_limited(routes: Router<AppState>, limit: u64) -> Router<AppState> {
    routes
        .layer(DefaultBodyLimit::max(limit as usize))
        .layer(middleware::from_fn(move |req, next| {
            refuse_declared_oversize(limit, req, next)
        }))
}

/// What owners call with their token: applications, versions and their
/// uploads, channels, builds, trials, artifacts.
fn public_api(config: &ServerConfig) -> Router<AppState> {
    let upload_limit = config.archive_limits.max_upload_bytes + FORM_OVERHEAD_BYTES;
    let upload = Router::new().route("/version", post(versions::upload).get(versions::list));
    Router::new()
        .route(
            "/application",
            post(applications::create).get(applications::list),
        )
        .route(
            "/application/{id}",
            get(applications::get)
                .patch(applications::update)
                .delete(applications::delete),
        )
        .route(
            "/version/{id}",
            get(versions::get)
                .patch(versions::update)
                .delete(versions::delete),
        )
        .route("/application/{id}/channels", get(channels::list))
        .route(
            "/application/{id}/channels/{name}",
            put(channels::promote).get(channels::get),
        )
        .route(
            "/application/{id}/channels/{name}/rollback",
            post(channels::rollback),
        )
        .route("/artifact/{file}", get(content::artifact))
        .route("/version/{id}/binary", get(versions::binary))
        .route("/version/{id}/source", get(versions::source))
        .route("/version/{id}/logs", get(versions::logs))
        .route("/version/{id}/try", post(trial::try_version))
        .route("/version_build", get(builds::list))
        .route("/version_build/{id}", get(builds::get))
        .route("/version_build/{id}/logs", get(builds::logs))
        .route("/version_build/{id}/cancel", post(builds::cancel))
        .merge(size_limited(upload, upload_limit))
}

/// What workers call with their token: claims, heartbeats, the source,
/// the live log and the reports, each body within its limit.
fn worker_api(config: &ServerConfig) -> Router<AppState> {
    let report_limit = config.max_binary_bytes + config.max_report_log_bytes + FORM_OVERHEAD_BYTES;
    let reports = Router::new()
        .route("/build_success/{id}", post(internal::build_success))
        .route("/build_fail/{id}", post(internal::build_fail))
        .route("/build_crash/{id}", post(internal::build_crash));
    let live_logs = Router::new().route("/internal/builds/{id}/log", post(internal::log_chunk));
    Router::new()
        .route("/internal/builds/claim", post(internal::claim))
        .route("/internal/builds/{id}/heartbeat", post(internal::heartbeat))
        .route("/internal/builds/{id}/source", get(internal::source))
        .merge(size_limited(reports, report_limit))
        .merge(size_limited(live_logs, config.max_report_log_bytes))
}

/// The server's own: liveness, readiness, metrics, the OpenAPI document
/// and the key its artifacts are signed with.
fn operations() -> Router<AppState> {
    Router::new()
        .route("/signing-key", get(ops::signing_key))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
}

/// Channels as a read-only OCI registry, for Istio.
fn registry_api() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(registry::base).fallback(registry::read_only))
        .route(
            "/v2/{*rest}",
            get(registry::dispatch).fallback(registry::read_only),
        )
        .layer(middleware::map_response(registry::api_version))
}

fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
}
