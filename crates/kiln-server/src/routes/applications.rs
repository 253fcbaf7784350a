//! `/application`: the customer's plugins.

use crate::AppState;
use crate::auth::Owner;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_domain::{AppId, Application, validate_name, validate_notes};
use kiln_store::keys;
use serde::Deserialize;

/// The body of `POST /application`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApplication {
    /// 1 to 100 characters, no control characters; surrounding spaces are
    /// trimmed.
    pub name: String,
    /// Free text, at most 10 000 bytes; default empty.
    #[serde(default)]
    pub notes: String,
}

/// The body of `PATCH /application/{id}`: the fields to change; one left
/// out keeps its value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApplication {
    /// A new name, 1 to 100 characters.
    pub name: Option<String>,
    /// New notes, at most 10 000 bytes.
    pub notes: Option<String>,
}

pub(crate) fn parse_app_id(raw: &str) -> ApiResult<AppId> {
    AppId::parse(raw).map_err(|_| ApiError::not_found("application", raw))
}

/// Creates an application of the caller's.
#[utoipa::path(post, path = "/application", tag = "applications",
    request_body = CreateApplication,
    responses((status = 201, body = Application), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiJson(body): ApiJson<CreateApplication>,
) -> ApiResult<(StatusCode, Json<Application>)> {
    let name = validate_name(&body.name)?;
    let notes = validate_notes(&body.notes)?;
    let app = state
        .meta
        .create_application(owner, &name, &notes)
        .await
        .map_err(|e| ApiError::internal("creating an application failed", e))?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// The caller's applications.
#[utoipa::path(get, path = "/application", tag = "applications",
    responses((status = 200, body = [Application]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
) -> ApiResult<Json<Vec<Application>>> {
    let apps = state
        .meta
        .list_applications(owner)
        .await
        .map_err(|e| ApiError::internal("listing applications failed", e))?;
    Ok(Json(apps))
}

/// One of the caller's applications.
#[utoipa::path(get, path = "/application/{id}", tag = "applications",
    params(("id" = String, Path, description = "application id")),
    responses((status = 200, body = Application), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<Application>> {
    let app_id = parse_app_id(&id)?;
    let app = state
        .meta
        .get_application(owner, app_id)
        .await
        .map_err(|e| ApiError::from_store(e, "application", &id))?;
    Ok(Json(app))
}

/// Renames an application or changes its notes.
#[utoipa::path(patch, path = "/application/{id}", tag = "applications",
    params(("id" = String, Path, description = "application id")),
    request_body = UpdateApplication,
    responses((status = 200, body = Application), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateApplication>,
) -> ApiResult<Json<Application>> {
    let app_id = parse_app_id(&id)?;
    let name = body.name.as_deref().map(validate_name).transpose()?;
    let notes = body.notes.as_deref().map(validate_notes).transpose()?;
    let app = state
        .meta
        .update_application(owner, app_id, name.as_deref(), notes.as_deref())
        .await
        .map_err(|e| ApiError::from_store(e, "application", &id))?;
    Ok(Json(app))
}

/// Deletes an application and everything it holds.
#[utoipa::path(delete, path = "/application/{id}", tag = "applications",
    description = "Deletes the application with all its versions, builds and stored blobs.",
    params(("id" = String, Path, description = "application id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let app_id = parse_app_id(&id)?;
    state
        .meta
        .delete_application(owner, app_id)
        .await
        .map_err(|e| ApiError::from_store(e, "application", &id))?;
    // Rows first: a failure below leaves unreferenced blobs, never a row
    // pointing at a missing blob.
    state
        .blobs
        .delete_prefix(&keys::app_prefix(app_id))
        .await
        .map_err(|e| ApiError::internal("deleting an application's blobs failed", e))?;
    Ok(StatusCode::NO_CONTENT)
}
