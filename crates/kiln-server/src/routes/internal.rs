//! The private API of workers and the evaluator. Every call takes a worker
//! token, which names the worker; every call about a build also takes the
//! lease id of its claim, and is accepted only from the worker that made
//! that claim, so a stale, forged or another worker's report changes
//! nothing (409).

use super::versions::{cwasm_name, parse_build_id, source_response};
use crate::AppState;
use crate::auth::Worker;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiQuery;
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
use kiln_domain::{BuildId, Version, VersionBuild, WorkerName};
use kiln_store::{ClaimedBuild, NewVersion, StoreError, keys};
use serde::Deserialize;
use sha2::{Digest, Sha256};
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
    let kind = if claimed.source_location.ends_with(".zip") {
        "zip"
    } else {
        "tar.gz"
    };
    Claim {
        build: claimed.build,
        lease_id: claimed.lease_id,
        lease_expires: claimed.lease_expires,
        lease_seconds: lease.as_secs(),
        source_path: format!("/internal/builds/{id}/source"),
        source_kind: kind.into(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ClaimQuery {
    /// Seconds to wait for a build when the queue is empty (0 to 30).
    pub wait_seconds: Option<u64>,
}

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
    let wait =
        Duration::from_secs(query.wait_seconds.unwrap_or(0)).min(crate::config::MAX_CLAIM_WAIT);
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
            if claimed.build.attempt == 1 {
                let waited = (chrono::Utc::now() - claimed.build.created)
                    .to_std()
                    .unwrap_or_default();
                state.metrics.observe_queue_wait(waited);
            }
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// Byte offset of the chunk in this lease's log.
    pub offset: u64,
}

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
) -> ApiResult<(ClaimedBuild, Uuid, Form)> {
    let build_id = parse_build_id(id, "build")?;
    let form = read_form(multipart, spec).await?;
    let lease = lease_from(headers, Some(&form))?;
    let claimed = state
        .meta
        .leased_build(build_id, lease, worker)
        .await
        .map_err(|e| lease_error(e, build_id))?;
    Ok((claimed, lease, form))
}

fn profile_field(form: &Form) -> ApiResult<Option<serde_json::Value>> {
    form.text(fields::PROFILE)
        .map(|raw| serde_json::from_str(raw).map_err(|_| ApiError::invalid("profile must be JSON")))
        .transpose()
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
    };
    let (claimed, lease, mut form) =
        report_form(&state, &worker.0, &id, &headers, multipart, &spec).await?;
    let binary = form.required_file(fields::BINARY)?;
    let logs = form.take_file(fields::LOGS).unwrap_or_default();
    let profile = profile_field(&form)?;
    let build = &claimed.build;
    check_reported_module(&binary, build).await?;
    let (artifacts, precompile_took) = if build.options.precompile {
        let started = std::time::Instant::now();
        let artifacts = state
            .artifacts
            .precompile(build.id, binary.clone())
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "precompile_failed",
                    format!("the module could not be precompiled: {e}"),
                )
            })?;
        (artifacts, Some(started.elapsed()))
    } else {
        (Vec::new(), None)
    };

    let binary_sha256 = hex::encode(Sha256::digest(&binary));
    let new = NewVersion {
        binary_location: keys::binary(build.application_id, build.id),
        binary_sha256,
        binary_size: binary.len() as i64,
        logs_location: keys::logs(build.application_id, build.id),
        profile,
    };
    let mut written = vec![
        (new.binary_location.clone(), binary),
        (new.logs_location.clone(), logs),
    ];
    for (target, signed) in artifacts {
        let name = cwasm_name(&target)?;
        written.push((
            keys::artifact(build.application_id, build.id, &name),
            signed.into(),
        ));
    }
    store_blobs(&state, &written).await?;
    match state.meta.complete_success(build.id, lease, &new).await {
        Ok(version) => {
            tracing::info!(build = %build.id, size = version.binary_size, "build succeeded");
            // Once per build: a report tried again after a 503 is not counted twice.
            state.metrics.observe_reported_stages(new.profile.as_ref());
            if let Some(took) = precompile_took {
                state.metrics.observe_stage("precompile", took);
            }
            state
                .live
                .finish(build.id, kiln_domain::BuildState::Succeeded);
            Ok((StatusCode::CREATED, Json(version)))
        }
        Err(e) => {
            // The lease was lost while the blobs were written: undo them.
            remove_blobs(&state, &written).await;
            Err(lease_error(e, build.id))
        }
    }
}

/// The server's own check of what a worker reports: a valid proxy-wasm
/// plugin with the build's phases (a worker runs customer code, so its
/// word is not enough), checked off the async threads.
async fn check_reported_module(binary: &Bytes, build: &VersionBuild) -> ApiResult<()> {
    let (binary, phases) = (binary.clone(), build.phases.clone());
    tokio::task::spawn_blocking(move || {
        kiln_wasm::check::check_module(&binary, phases.as_slice()).map(drop)
    })
    .await
    .map_err(|e| ApiError::internal("checking a reported module", e))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_module",
            format!("the reported binary is not a valid proxy-wasm plugin: {e}"),
        )
    })
}

async fn store_blobs(state: &AppState, blobs: &[(String, Bytes)]) -> ApiResult<()> {
    for (i, (key, bytes)) in blobs.iter().enumerate() {
        if let Err(e) = state.blobs.put(key, bytes.clone()).await {
            remove_blobs(state, &blobs[..i]).await;
            return Err(ApiError::internal("storing a build result failed", e));
        }
    }
    Ok(())
}

async fn remove_blobs(state: &AppState, blobs: &[(String, Bytes)]) {
    for (key, _) in blobs {
        if let Err(e) = state.blobs.delete(key).await {
            tracing::error!(%e, key, "could not remove a blob of a refused report");
        }
    }
}

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
    let (claimed, lease, mut form) =
        report_form(&state, &worker.0, &id, &headers, multipart, &spec).await?;
    let logs = form.required_file(fields::LOGS)?;
    let error = error_field(&form, "the build failed; see its logs");
    let profile = profile_field(&form)?;
    let build = &claimed.build;
    let key = keys::logs(build.application_id, build.id);
    store_blobs(&state, &[(key.clone(), logs)]).await?;
    let updated = state
        .meta
        .complete_failure(build.id, lease, &key, &error, profile.as_ref())
        .await
        .map_err(|e| lease_error(e, build.id))?;
    tracing::info!(build = %build.id, %error, "build failed");
    state.live.finish(build.id, updated.state);
    Ok(Json(updated))
}

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
    let (claimed, lease, mut form) =
        report_form(&state, &worker.0, &id, &headers, multipart, &spec).await?;
    let error = error_field(&form, "the worker crashed");
    let build = &claimed.build;
    let logs_key = match form.take_file(fields::LOGS) {
        Some(logs) => {
            let key = keys::logs(build.application_id, build.id);
            store_blobs(&state, &[(key.clone(), logs)]).await?;
            Some(key)
        }
        None => None,
    };
    let updated = state
        .meta
        .report_crash(
            build.id,
            lease,
            logs_key.as_deref(),
            &error,
            state.config.max_attempts,
        )
        .await
        .map_err(|e| lease_error(e, build.id))?;
    tracing::warn!(build = %build.id, %error, state = %updated.state, "build crashed");
    if updated.state == kiln_domain::BuildState::Queued {
        state.queue_signal.notify_waiters();
    } else {
        state.live.finish(build.id, updated.state);
    }
    Ok(Json(updated))
}

/// Re-queues builds whose worker stopped heartbeating, forever.
pub async fn reap_forever(state: AppState) {
    let mut tick = tokio::time::interval(state.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.live.prune(crate::live::IDLE_BUFFER);
        match state.meta.reap_expired(state.config.max_attempts).await {
            Ok(0) => {}
            Ok(_) => state.queue_signal.notify_waiters(),
            Err(e) => tracing::error!(%e, "reaping expired leases failed"),
        }
    }
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
