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

pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let upload_limit = config.archive_limits.max_upload_bytes + FORM_OVERHEAD_BYTES;
    let report_limit = config.max_binary_bytes + config.max_report_log_bytes + FORM_OVERHEAD_BYTES;

    let upload = Router::new()
        .route("/version", post(versions::upload).get(versions::list))
        .layer(DefaultBodyLimit::max(upload_limit as usize))
        .layer(middleware::from_fn(move |req, next| {
            refuse_declared_oversize(upload_limit, req, next)
        }));
    let reports = Router::new()
        .route("/build_success/{id}", post(internal::build_success))
        .route("/build_fail/{id}", post(internal::build_fail))
        .route("/build_crash/{id}", post(internal::build_crash))
        .layer(DefaultBodyLimit::max(report_limit as usize))
        .layer(middleware::from_fn(move |req, next| {
            refuse_declared_oversize(report_limit, req, next)
        }));
    let log_limit = config.max_report_log_bytes;
    let live_logs = Router::new()
        .route("/internal/builds/{id}/log", post(internal::log_chunk))
        .layer(DefaultBodyLimit::max(log_limit as usize))
        .layer(middleware::from_fn(move |req, next| {
            refuse_declared_oversize(log_limit, req, next)
        }));

    let registry = Router::new()
        .route("/v2/", get(registry::base).fallback(registry::read_only))
        .route(
            "/v2/{*rest}",
            get(registry::dispatch).fallback(registry::read_only),
        )
        .layer(middleware::map_response(registry::api_version));

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
        .route("/internal/builds/claim", post(internal::claim))
        .route("/internal/builds/{id}/heartbeat", post(internal::heartbeat))
        .route("/internal/builds/{id}/source", get(internal::source))
        .route("/signing-key", get(ops::signing_key))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .merge(upload)
        .merge(reports)
        .merge(live_logs)
        .merge(registry)
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
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), uri = %request.uri(), request_id = %id)
}
