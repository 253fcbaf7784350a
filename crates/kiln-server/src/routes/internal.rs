//! The private API of workers and the evaluator. Every call takes a worker
//! token, which names the worker; every call about a build also takes the
//! lease id of its claim, and is accepted only from the worker that made
//! that claim, so a stale, forged or another worker's report changes
//! nothing (409).

use super::versions::{parse_build_id, source_response};
use crate::AppState;
use crate::auth::Worker;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiQuery, wait_within};
use crate::service::report::{self, Leased, ReportError, Success};
use crate::upload::{Form, FormSpec, Refused, read_form};
use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kiln_domain::worker_api::{
    Claim, Heartbeat, LEASE_HEADER, LEASE_LOST_CODE, LogReceived, fields,
};
use kiln_domain::{
    BuildId, BuildProfile, BuildState, SourceKind, Version, VersionBuild, WorkerName,
};
use kiln_store::{ClaimedBuild, StoreError};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn lease_from(headers: &HeaderMap, form: Option<&Form>) -> ApiResult<Uuid> {
    let raw = headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| form.and_then(|f| f.text("lease_id")))
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_lease",
                format!("the {LEASE_HEADER} header is required"),
            )
        })?;
    Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::conflict(LEASE_LOST_CODE, "the lease id is not valid"))
}

fn lease_error(e: StoreError, id: BuildId) -> ApiError {
    ApiError::from_store(e, "build", id)
}

fn claim_answer(claimed: ClaimedBuild, lease: Duration) -> Claim {
    let id = claimed.build.id;
    let source_kind = SourceKind::of_location(&claimed.source_location);
    Claim {
        build: claimed.build,
        lease_id: claimed.lease_id,
        lease_expires: claimed.lease_expires,
        lease_seconds: lease.as_secs(),
        source_path: format!("/internal/builds/{id}/source"),
        source_kind,
    }
}

/// The long poll of `POST /internal/builds/claim`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimQuery {
    /// Seconds to wait for a build when the queue is empty (0 to 30).
    #[param(minimum = 0, maximum = 30)]
    pub wait_seconds: Option<u64>,
}

/// Claims the oldest queued build (a long poll).
#[utoipa::path(post, path = "/internal/builds/claim", tag = "worker",
    description = "Claims the oldest queued build with a fresh lease for the calling worker, which the build records as its `worker`; 204 when none is queued within `wait_seconds`.",
    params(ClaimQuery),
    responses((status = 200, body = Claim), (status = 204), (status = 401, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn claim(
    State(state): State<AppState>,
    worker: Worker,
    ApiQuery(query): ApiQuery<ClaimQuery>,
) -> ApiResult<Response> {
    let wait = wait_within(query.wait_seconds, crate::config::MAX_CLAIM_WAIT)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the claim, so a build queued in between still wakes us.
        let notified = state.queue_signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let claimed = state
            .meta
            .claim_next(state.config.lease, &worker.0)
            .await
            .map_err(|e| ApiError::internal("claiming a build failed", e))?;
        if let Some(claimed) = claimed {
            tracing::info!(build = %claimed.build.id, attempt = claimed.build.attempt, worker = %worker.0, "build claimed");
            let waited = chrono::Utc::now() - claimed.build.created;
            state.metrics.claimed(waited.as_seconds_f64());
            return Ok(Json(claim_answer(claimed, state.config.lease)).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Other servers sharing the database cannot wake us: look again each second.
        let pause = (deadline - now).min(Duration::from_secs(1));
        let _ = tokio::time::timeout(pause, notified).await;
    }
}

/// Extends the lease on a claimed build.
#[utoipa::path(post, path = "/internal/builds/{id}/heartbeat", tag = "worker",
    description = "Extends the lease. 409 when the build is no longer running under it (cancelled, re-queued, finished) or the lease is another worker's: the worker must stop. 401 once its token is revoked.",
    params(("id" = String, Path, description = "build id"), ("x-kiln-lease" = String, Header, description = "lease id")),
    responses((status = 200, body = Heartbeat), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    worker: Worker,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Heartbeat>> {
    let build_id = parse_build_id(&id, "build")?;
    let lease = lease_from(&headers, None)?;
    let expires = state
        .meta
        .heartbeat(build_id, lease, &worker.0, state.config.lease)
        .await
        .map_err(|e| lease_error(e, build_id))?;
    Ok(Json(Heartbeat {
        build_id,
        lease_expires: expires,
    }))
}

/// The source archive of a claimed build.
#[utoipa::path(get, path = "/internal/builds/{id}/source", tag = "worker",
    description = "The source archive of a build this worker holds under the lease.",
    params(("id" = String, Path, description = "build id"), ("x-kiln-lease" = String, Header, description = "lease id")),
    responses((status = 200, body = Vec<u8>), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn source(
    State(state): State<AppState>,
    worker: Worker,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let build_id = parse_build_id(&id, "build")?;
    let lease = lease_from(&headers, None)?;
    let claimed = state
        .meta
        .leased_build(build_id, lease, &worker.0)
        .await
        .map_err(|e| lease_error(e, build_id))?;
    source_response(&state, &claimed.source_location).await
}

/// The query of `POST /internal/builds/{id}/log`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Byte offset of the chunk in this lease's log.
    pub offset: u64,
}

/// Appends a chunk to a running build's live log.
#[utoipa::path(post, path = "/internal/builds/{id}/log", tag = "worker",
    description = "The next chunk of a running build's log (UTF-8 text starting at byte `offset` of the log under this lease), for its live readers. A chunk sent again is not appended twice; the answer says where the next one starts. The final report still carries the whole log.",
    params(LogQuery, ("id" = String, Path, description = "build id"), ("x-kiln-lease" = String, Header, description = "lease id")),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = LogReceived), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn log_chunk(
    State(state): State<AppState>,
    worker: Worker,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<LogReceived>> {
    let build_id = parse_build_id(&id, "build")?;
    let lease = lease_from(&headers, None)?;
    state
        .meta
        .leased_build(build_id, lease, &worker.0)
        .await
        .map_err(|e| lease_error(e, build_id))?;
    let chunk = std::str::from_utf8(&body).map_err(|_| {
        ApiError::invalid("a log chunk must be UTF-8 text cut on a character boundary")
    })?;
    let received = state.live.append(build_id, lease, query.offset, chunk);
    Ok(Json(LogReceived { received }))
}

/// Reads a report form and checks that its lease is `worker`'s before
/// anything is stored.
async fn report_form(
    state: &AppState,
    worker: &WorkerName,
    id: &str,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    spec: &FormSpec<'_>,
) -> ApiResult<(ClaimedBuild, Uuid, Form, ReportTurn)> {
    let build_id = parse_build_id(id, "build")?;
    let form = read_form(multipart, spec).await?;
    let lease = lease_from(headers, Some(&form))?;
    let turn = state.reporting.turn(build_id).await;
    let claimed = state
        .meta
        .leased_build(build_id, lease, worker)
        .await
        .map_err(|e| lease_error(e, build_id))?;
    Ok((claimed, lease, form, turn))
}

/// One report at a time per build on this server: reports write the same
/// blob keys, and a refused one removes what it wrote. (Servers sharing a
/// store each keep their own; the lease check still lets only one commit.)
#[derive(Debug, Default)]
pub struct Reporting {
    builds: std::sync::Mutex<std::collections::HashMap<BuildId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A report's turn: the next report of the build waits until it drops.
pub struct ReportTurn {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Reporting {
    async fn turn(&self, build: BuildId) -> ReportTurn {
        let lock = {
            let mut builds = self
                .builds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget builds no report holds any more.
            builds.retain(|_, lock| Arc::strong_count(lock) > 1);
            builds.entry(build).or_default().clone()
        };
        ReportTurn {
            _held: lock.lock_owned().await,
        }
    }
}

fn profile_field(form: &Form) -> ApiResult<Option<BuildProfile>> {
    let reported = form.text(fields::PROFILE).map(BuildProfile::parse_reported);
    Ok(reported.transpose()?)
}

/// Most bytes of a reported error kept on the build record.
const MAX_ERROR_BYTES: usize = 2000;

fn error_field(form: &Form, default: &str) -> String {
    error_text(form.text(fields::ERROR), default)
}

/// The reported error, trimmed, at most [`MAX_ERROR_BYTES`] (it quotes the
/// customer's code and output, so it is cut on a character boundary).
fn error_text(reported: Option<&str>, default: &str) -> String {
    let text = reported.unwrap_or(default).trim();
    let text = if text.is_empty() { default } else { text };
    kiln_domain::text::cap(text, MAX_ERROR_BYTES).to_owned()
}

/// What a report carrying native code is told.
const NATIVE_CODE_REFUSED: Refused<'static> = Refused {
    prefix: fields::CWASM_PREFIX,
    code: "native_code_refused",
    sentence: "a worker may not hand over precompiled native code: the server precompiles each .wasm itself",
};

/// Reports a build that succeeded.
#[utoipa::path(post, path = "/build_success/{id}", tag = "worker",
    description = "Reports a successful build (multipart: `binary`, `logs`, optional `profile` JSON). The server validates the `.wasm` itself, precompiles and signs its `.cwasm` for each configured target, stores the blobs and creates the version in one step. A report that carries precompiled code (`cwasm.*` fields) is refused.",
    params(("id" = String, Path, description = "build id"), ("x-kiln-lease" = String, Header, description = "lease id")),
    responses((status = 201, body = Version), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn build_success(
    State(state): State<AppState>,
    worker: Worker,
    Path(id): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Version>)> {
    let config = &state.config;
    let spec = FormSpec {
        files: &[
            (fields::BINARY, config.max_binary_bytes),
            (fields::LOGS, config.max_report_log_bytes),
        ],
        refused: &[NATIVE_CODE_REFUSED],
        texts: None,
    };
    let (claimed, lease, mut form, _turn) =
        report_form(&state, &worker.0, &id, &headers, multipart, &spec).await?;
    let success = Success {
        binary: form.required_file(fields::BINARY)?,
        logs: form.take_file(fields::LOGS).unwrap_or_default(),
        profile: profile_field(&form)?,
    };
    let leased = Leased {
        claimed: &claimed,
        lease,
    };
    let version = report::succeeded(state.stores(), &state.artifacts, leased, success).await?;
    tracing::info!(build = %version.id, size = version.binary_size, "build succeeded");
    let (state_now, profile) = (BuildState::Succeeded, version.profile.as_ref());
    state
        .metrics
        .finished(worker.0.as_str(), state_now, profile);
    state.live.finish(version.id, state_now);
    Ok((StatusCode::CREATED, Json(version)))
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        let message = e.to_string();
        match e {
            ReportError::InvalidModule(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_module", message)
            }
            ReportError::Precompile(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "precompile_failed",
                message,
            ),
            ReportError::InvalidTarget(_) => Self::internal("naming an artifact failed", message),
            ReportError::Store {
                source: source @ (StoreError::LeaseLost(_) | StoreError::NotFound),
                build,
                ..
            } => lease_error(source, build),
            ReportError::Store {
                context, source, ..
            } => Self::internal(context, source),
            ReportError::Check(source) => Self::internal(&message, source),
        }
    }
}

/// Reports a build the customer's code broke.
#[utoipa::path(post, path = "/build_fail/{id}", tag = "worker",
    description = "Reports that the customer's code did not build (multipart: `logs`, optional `error`, `profile`).",
    params(("id" = String, Path, description = "build id"), ("x-kiln-lease" = String, Header, description = "lease id")),
    responses((status = 200, body = VersionBuild), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn build_fail(
    State(state): State<AppState>,
    worker: Worker,
    Path(id): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<VersionBuild>> {
    let files = [(fields::LOGS, state.config.max_report_log_bytes)];
    let spec = FormSpec::files(&files);
    let (claimed, lease, mut form, _turn) =
        report_form(&state, &worker.0, &id, &headers, multipart, &spec).await?;
    let logs = form.required_file(fields::LOGS)?;
    let error = error_field(&form, "the build failed; see its logs");
    let profile = profile_field(&form)?;
    let leased = Leased {
        claimed: &claimed,
        lease,
    };
    let updated = report::failed(state.stores(), leased, logs, &error, profile.as_ref()).await?;
    tracing::info!(build = %updated.id, %error, "build failed");
    let reported = updated.profile.as_ref();
    state
        .metrics
        .finished(worker.0.as_str(), updated.state, reported);
    state.live.finish(updated.id, updated.state);
    Ok(Json(updated))
}

/// Reports a build kiln itself failed to run.
#[utoipa::path(post, path = "/build_crash/{id}", tag = "worker",
    description = "Reports kiln's own failure (multipart: optional `logs`, `error`). The build is queued again until it has used its attempts.",
    params(("id" = String, Path, description = "build id"), ("x-kiln-lease" = String, Header, description = "lease id")),
    responses((status = 200, body = VersionBuild), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("worker" = [])))]
pub async fn build_crash(
    State(state): State<AppState>,
    worker: Worker,
    Path(id): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<VersionBuild>> {
    let files = [(fields::LOGS, state.config.max_report_log_bytes)];
    let spec = FormSpec::files(&files);
    let (claimed, lease, mut form, _turn) =
        report_form(&state, &worker.0, &id, &headers, multipart, &spec).await?;
    let error = error_field(&form, "the worker crashed");
    let logs = form.take_file(fields::LOGS);
    let leased = Leased {
        claimed: &claimed,
        lease,
    };
    let max_attempts = state.config.max_attempts;
    let updated = report::crashed(state.stores(), leased, logs, &error, max_attempts).await?;
    tracing::warn!(build = %updated.id, %error, state = %updated.state, "build crashed");
    state
        .metrics
        .finished(worker.0.as_str(), updated.state, None);
    if updated.state == BuildState::Queued {
        state.queue_signal.notify_waiters();
    } else {
        state.live.finish(updated.id, updated.state);
    }
    Ok(Json(updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multibyte_error_past_the_cap_is_cut_on_a_character_boundary() {
        for shift in 0..4 {
            let reported = format!("{}{}", "x".repeat(shift), "🦀é日".repeat(MAX_ERROR_BYTES));
            let kept = error_text(Some(&reported), "default");
            assert!(kept.len() <= MAX_ERROR_BYTES && kept.len() > MAX_ERROR_BYTES - 4);
            assert!(reported.starts_with(&kept));
        }
    }

    #[test]
    fn a_missing_or_blank_error_is_the_default() {
        assert_eq!(error_text(None, "the worker crashed"), "the worker crashed");
        assert_eq!(
            error_text(Some("  \n"), "the worker crashed"),
            "the worker crashed"
        );
        assert_eq!(error_text(Some(" 日本 "), "x"), "日本");
    }
}
