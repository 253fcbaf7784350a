//! `/version`: uploading source (which queues a build) and the versions
//! successful builds produced.

use super::applications::parse_app_id;
use crate::AppState;
use crate::auth::Owner;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::service::upload::{self, Upload, UploadError, UploadLimits};
use crate::upload::{FormSpec, read_form};
use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kiln_domain::{
    BuildId, BuildOptions, Language, OwnerId, Phases, SourceKind, Version, VersionBuild,
    parse_version, validate_conf, validate_notes,
};
use kiln_store::{StoreError, VersionPatch, keys};
use serde::Deserialize;

/// The text fields of an upload's form; `source_code` is its file.
const UPLOAD_TEXT_FIELDS: [&str; 7] = [
    "plugin_id",
    "version",
    "plugin_language",
    "phases",
    "conf",
    "notes",
    "options",
];

/// The `multipart/form-data` body of `POST /version`. A field it does not
/// name is refused.
#[derive(utoipa::ToSchema)]
// For the document only: `deny_unknown_fields` is its `additionalProperties: false`.
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The application id.
    #[schema(format = Uuid)]
    plugin_id: String,
    /// A semantic version, unique within the application.
    version: String,
    /// The language of the source.
    plugin_language: Language,
    /// A JSON array of phases, e.g. `["request_headers","response_headers"]`.
    phases: String,
    /// The plugin configuration, passed to the plugin at start.
    #[schema(required = false)]
    conf: String,
    #[schema(required = false)]
    notes: String,
    /// JSON switches of the post-build steps, e.g. `{"optimize": false, "precompile": true}` (all on by default).
    #[schema(required = false)]
    options: String,
    /// The source as `.tar.gz` or `.zip`, Cargo.toml at the root or in one top-level folder.
    #[schema(value_type = String, format = Binary)]
    source_code: Vec<u8>,
}

pub(crate) fn parse_build_id(raw: &str, what: &str) -> ApiResult<BuildId> {
    BuildId::parse(raw).map_err(|_| ApiError::not_found(what, raw))
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        let message = e.to_string();
        match e {
            UploadError::NoApplication(_) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            UploadError::TooManyBuilds { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_builds", message)
            }
            UploadError::NotAnArchive | UploadError::Unreadable(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_archive",
                message,
            ),
            UploadError::Refused(_) => Self::invalid(message),
            UploadError::DuplicateVersion(message) => Self::conflict("duplicate_version", message),
            UploadError::Store { context, source } => Self::internal(context, source),
            UploadError::Inspection(source) => Self::internal(&message, source),
        }
    }
}

/// Uploads a plugin's source and queues its build.
#[utoipa::path(post, path = "/version", tag = "versions",
    description = "Uploads a plugin's source and queues its build. The source is stored before the answer.",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = VersionBuild, description = "the queued build"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "the owner has too many builds queued or running")),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Owner(owner): Owner,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<VersionBuild>)> {
    let limit = state.config.archive_limits.max_upload_bytes;
    let files = [("source_code", limit)];
    let spec = FormSpec {
        texts: Some(&UPLOAD_TEXT_FIELDS),
        ..FormSpec::files(&files)
    };
    let mut form = read_form(multipart, &spec).await?;
    let plugin_id = form.required_text("plugin_id")?.to_owned();
    let upload = Upload {
        owner,
        version: parse_version(form.required_text("version")?)?,
        language: Language::parse(form.required_text("plugin_language")?)?,
        phases: Phases::parse_json(form.required_text("phases")?)?,
        conf: validate_conf(form.text("conf").unwrap_or_default())?,
        notes: validate_notes(form.text("notes").unwrap_or_default())?,
        options: form
            .text("options")
            .map(BuildOptions::parse_json)
            .transpose()?
            .unwrap_or_default(),
        source: form.required_file("source_code")?,
        application: parse_app_id(&plugin_id)?,
    };
    let limits = UploadLimits {
        archive: state.config.archive_limits.clone(),
        max_unfinished_builds: state.config.max_unfinished_builds,
    };
    let build = upload::queue(state.stores(), &limits, upload).await?;
    state.queue_signal.notify_waiters();
    tracing::info!(build = %build.id, application = %build.application_id, version = %build.version, "build queued");
    Ok((StatusCode::CREATED, Json(build)))
}

/// The query of `GET /version`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// Only this application's versions.
    #[param(format = Uuid)]
    pub application_id: Option<String>,
}

/// The caller's versions.
#[utoipa::path(get, path = "/version", tag = "versions", params(VersionQuery),
    responses((status = 200, body = [Version]), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiQuery(query): ApiQuery<VersionQuery>,
) -> ApiResult<Json<Vec<Version>>> {
    let app = match query.application_id.as_deref() {
        Some(raw) => {
            let id = parse_app_id(raw)?;
            state
                .meta
                .get_application(owner, id)
                .await
                .map_err(|e| ApiError::from_store(e, "application", raw))?;
            Some(id)
        }
        None => None,
    };
    let versions = state
        .meta
        .list_versions(owner, app)
        .await
        .map_err(|e| ApiError::internal("listing versions failed", e))?;
    Ok(Json(versions))
}

async fn load(state: &AppState, owner: Owner, raw: &str) -> ApiResult<Version> {
    let id = parse_build_id(raw, "version")?;
    state
        .meta
        .get_version(owner.0, id)
        .await
        .map_err(|e| ApiError::from_store(e, "version", raw))
}

/// One of the caller's versions.
#[utoipa::path(get, path = "/version/{id}", tag = "versions",
    params(("id" = String, Path, description = "version id (the id of the build that made it)")),
    responses((status = 200, body = Version), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    owner: Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<Version>> {
    Ok(Json(load(&state, owner, &id).await?))
}

/// The body of `PATCH /version/{id}`: the fields to change; one left out
/// keeps its value. `conf` and `phases` cannot change while a channel
/// points at the version.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVersion {
    /// A new semantic version, unique within the application.
    pub version: Option<String>,
    /// The phases the plugin handles, at least one.
    #[schema(value_type = Option<Vec<kiln_domain::Phase>>, min_items = 1)]
    pub phases: Option<Vec<String>>,
    /// A new plugin configuration, at most 1 MiB.
    pub conf: Option<String>,
    /// New notes, at most 10 000 bytes.
    pub notes: Option<String>,
}

/// Changes a version's number, phases, configuration or notes.
#[utoipa::path(patch, path = "/version/{id}", tag = "versions",
    params(("id" = String, Path, description = "version id")),
    request_body = UpdateVersion,
    responses((status = 200, body = Version), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateVersion>,
) -> ApiResult<Json<Version>> {
    let build_id = parse_build_id(&id, "version")?;
    let patch = VersionPatch {
        version: body.version.as_deref().map(parse_version).transpose()?,
        phases: body.phases.as_deref().map(Phases::from_names).transpose()?,
        conf: body.conf.as_deref().map(validate_conf).transpose()?,
        notes: body.notes.as_deref().map(validate_notes).transpose()?,
    };
    if patch.conf.is_some() || patch.phases.is_some() {
        refuse_if_deployed(&state, owner, build_id, &id).await?;
    }
    let version = state
        .meta
        .update_version(owner, build_id, &patch)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(message) => ApiError::conflict("duplicate_version", message),
            e => ApiError::from_store(e, "version", &id),
        })?;
    Ok(Json(version))
}

/// What edge servers run of a deployed version must not change under them:
/// its configuration and phases are fixed while a channel points at it.
async fn refuse_if_deployed(
    state: &AppState,
    owner: OwnerId,
    build_id: BuildId,
    id: &str,
) -> ApiResult<()> {
    state
        .meta
        .get_version(owner, build_id)
        .await
        .map_err(|e| ApiError::from_store(e, "version", id))?;
    let channels = state
        .meta
        .channels_of_version(build_id)
        .await
        .map_err(|e| ApiError::internal("reading a version's channels failed", e))?;
    if channels.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(
        "version_deployed",
        format!(
            "version {id} is deployed on {}: its conf and phases cannot change while it is; build a new version and promote that",
            channels.join(", ")
        ),
    ))
}

/// Deletes a version and its blobs.
#[utoipa::path(delete, path = "/version/{id}", tag = "versions",
    description = "Deletes the version, its build and its source, binary and logs. 409 while a channel points at it.",
    params(("id" = String, Path, description = "version id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let build_id = parse_build_id(&id, "version")?;
    let version = state
        .meta
        .delete_version(owner, build_id)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(message) => ApiError::conflict("version_deployed", message),
            e => ApiError::from_store(e, "version", &id),
        })?;
    state
        .blobs
        .delete_prefix(&keys::build_prefix(version.application_id, version.id))
        .await
        .map_err(|e| ApiError::internal("deleting a version's blobs failed", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /version/{id}/binary`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BinaryQuery {
    /// `wasm` (default) or `cwasm` (precompiled for one target).
    pub format: Option<String>,
    /// The target triple of a `cwasm`, e.g. `x86_64-unknown-linux-gnu`.
    pub target: Option<String>,
}

/// A version's module, as `.wasm` or as a signed `.cwasm`.
#[utoipa::path(get, path = "/version/{id}/binary", tag = "versions",
    description = "The plugin binary. `ETag` is the sha256 of the `.wasm`; `If-None-Match` answers 304.",
    params(("id" = String, Path, description = "version id"), BinaryQuery),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 304),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn binary(
    State(state): State<AppState>,
    owner: Owner,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<BinaryQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let version = load(&state, owner, &id).await?;
    match query.format.as_deref().unwrap_or("wasm") {
        "wasm" => {
            let etag = format!("\"{}\"", version.binary_sha256);
            if headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                == Some(etag.as_str())
            {
                return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
            }
            let bytes = fetch_blob(&state, &version.binary_location).await?;
            Ok(blob_response(bytes, "application/wasm", Some(etag)))
        }
        "cwasm" => {
            let target = query.target.as_deref().ok_or_else(|| {
                ApiError::bad_request("missing_target", "format=cwasm needs target=<triple>")
            })?;
            let key = keys::artifact(&version.binary_location, &cwasm_name(target)?);
            let bytes = state.blobs.get(&key).await.map_err(|e| match e {
                StoreError::NotFound => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("version {id} has no precompiled artifact for target {target}"),
                ),
                e => ApiError::internal("reading an artifact failed", e),
            })?;
            Ok(blob_response(bytes, "application/octet-stream", None))
        }
        other => Err(ApiError::bad_request(
            "invalid_format",
            format!("unknown format {other:?}; use wasm or cwasm"),
        )),
    }
}

/// The blob name of a precompiled artifact for a target a client named.
pub fn cwasm_name(target: &str) -> ApiResult<String> {
    crate::artifacts::cwasm_name(target).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_target",
            format!("{target:?} is not a target triple"),
        )
    })
}

/// The source archive a version was built from.
#[utoipa::path(get, path = "/version/{id}/source", tag = "versions",
    params(("id" = String, Path, description = "version id")),
    responses((status = 200, body = Vec<u8>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn source(
    State(state): State<AppState>,
    owner: Owner,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let version = load(&state, owner, &id).await?;
    source_response(&state, &version.source_location).await
}

pub(crate) async fn source_response(state: &AppState, location: &str) -> ApiResult<Response> {
    let content_type = SourceKind::of_location(location).content_type();
    let bytes = fetch_blob(state, location).await?;
    Ok(blob_response(bytes, content_type, None))
}

/// The log of the build that made a version.
#[utoipa::path(get, path = "/version/{id}/logs", tag = "versions",
    params(("id" = String, Path, description = "version id")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    owner: Owner,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let version = load(&state, owner, &id).await?;
    let bytes = fetch_blob(&state, &version.logs_location).await?;
    Ok(blob_response(bytes, "text/plain; charset=utf-8", None))
}

pub(crate) async fn fetch_blob(state: &AppState, key: &str) -> ApiResult<Bytes> {
    state
        .blobs
        .get(key)
        .await
        .map_err(|e| ApiError::internal("reading a blob failed", format!("{key}: {e}")))
}

pub(crate) fn blob_response(
    bytes: Bytes,
    content_type: &'static str,
    etag: Option<String>,
) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    response
}
