//! `/version_build`: builds, their state and their logs.

use super::applications::parse_app_id;
use super::versions::{blob_response, fetch_blob, parse_build_id};
use crate::AppState;
use crate::auth::Owner;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiQuery;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_domain::{BuildId, BuildState, VersionBuild};
use kiln_store::{BuildFilter, Page};
use serde::Deserialize;

/// Most builds one page returns.
pub const MAX_PAGE: i64 = 200;

/// The filters and the page of `GET /version_build`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildQuery {
    /// Only this application's builds.
    #[param(format = Uuid)]
    pub application_id: Option<String>,
    /// Only builds in this state.
    #[param(value_type = Option<kiln_domain::BuildState>)]
    pub state: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// Builds to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Only the builds listed after this one (the `Link` header's next page
    /// gives it): a page costs the same however deep it is.
    #[param(format = Uuid)]
    pub after: Option<String>,
}

/// The caller's builds, newest first, a page at a time.
#[utoipa::path(get, path = "/version_build", tag = "builds",
    description = "The caller's builds, newest first. When more remain, a `Link: <…>; rel=\"next\"` header points to the next page.",
    params(BuildQuery),
    responses((status = 200, body = [VersionBuild]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no application `application_id`"), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiQuery(query): ApiQuery<BuildQuery>,
) -> ApiResult<Response> {
    let limit = query.limit.unwrap_or(50);
    let offset = query.offset.unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&limit) || offset < 0 {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {MAX_PAGE} and offset at least 0"
        )));
    }
    let after = query
        .after
        .as_deref()
        .map(|raw| {
            BuildId::parse(raw)
                .map_err(|_| ApiError::invalid(format!("after {raw:?} is not a build id")))
        })
        .transpose()?;
    let filter = BuildFilter {
        application_id: query
            .application_id
            .as_deref()
            .map(parse_app_id)
            .transpose()?,
        state: query.state.as_deref().map(BuildState::parse).transpose()?,
    };
    // One extra row tells whether a next page exists.
    let mut builds = state
        .meta
        .list_builds(
            owner,
            &filter,
            Page {
                limit: limit + 1,
                offset,
                after,
            },
        )
        .await
        .map_err(|e| ApiError::internal("listing builds failed", e))?;
    let more = builds.len() as i64 > limit;
    builds.truncate(limit as usize);
    let last = builds.last().map(|b| b.id);
    let mut response = Json(builds).into_response();
    if more {
        let next = next_link(&query, limit, last);
        if let Ok(value) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

fn next_link(query: &BuildQuery, limit: i64, last: Option<BuildId>) -> String {
    let mut params = vec![format!("limit={limit}")];
    if let Some(last) = last {
        params.push(format!("after={last}"));
    }
    if let Some(app) = &query.application_id {
        params.push(format!("application_id={app}"));
    }
    if let Some(s) = &query.state {
        params.push(format!("state={s}"));
    }
    format!("</version_build?{}>; rel=\"next\"", params.join("&"))
}

/// One of the caller's builds.
#[utoipa::path(get, path = "/version_build/{id}", tag = "builds",
    params(("id" = String, Path, description = "build id")),
    responses((status = 200, body = VersionBuild), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<VersionBuild>> {
    let build_id = parse_build_id(&id, "build")?;
    let build = state
        .meta
        .get_build(owner, build_id)
        .await
        .map_err(|e| ApiError::from_store(e, "build", &id))?;
    Ok(Json(build))
}

/// The query of `GET /version_build/{id}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Stream the log as Server-Sent Events until the build ends.
    pub follow: Option<bool>,
}

/// A build's log, stored or live, or followed as Server-Sent Events.
#[utoipa::path(get, path = "/version_build/{id}/logs", tag = "builds",
    description = "The build's log as plain text: the stored log once a worker has reported it, the live log so far while it runs on this server (404 when there is neither). With `follow=true`, Server-Sent Events: `log` events (`{\"text\": …}`, id = the byte offset after it) as the build runs, then one `end` event (`{\"state\", \"error\", \"build\"}`); `Last-Event-ID` resumes after that offset.",
    params(("id" = String, Path, description = "build id"), LogsQuery,
        ("last-event-id" = Option<u64>, Header, description = "with follow: the offset already seen")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let build_id = parse_build_id(&id, "build")?;
    let build = state
        .meta
        .get_build(owner, build_id)
        .await
        .map_err(|e| ApiError::from_store(e, "build", &id))?;
    if query.follow == Some(true) {
        let offset = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        return Ok(super::follow::follow(state, owner, build, offset).into_response());
    }
    let Some(location) = build.logs_location else {
        if let Some(live) = state.live.get(build_id) {
            return Ok(blob_response(
                live.text().into(),
                "text/plain; charset=utf-8",
                None,
            ));
        }
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "logs_not_ready",
            format!("build {id} is {} and has no logs yet", build.state),
        ));
    };
    let bytes = fetch_blob(&state, &location).await?;
    Ok(blob_response(bytes, "text/plain; charset=utf-8", None))
}

/// Cancels a queued or running build.
#[utoipa::path(post, path = "/version_build/{id}/cancel", tag = "builds",
    description = "Cancels a queued or running build; a running build's worker stops at its next heartbeat.",
    params(("id" = String, Path, description = "build id")),
    responses((status = 200, body = VersionBuild), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<VersionBuild>> {
    let build_id = parse_build_id(&id, "build")?;
    let build = state
        .meta
        .cancel_build(owner, build_id)
        .await
        .map_err(|e| match e {
            kiln_store::StoreError::Conflict(message) => {
                ApiError::conflict("not_cancellable", message)
            }
            e => ApiError::from_store(e, "build", &id),
        })?;
    tracing::info!(build = %build.id, "build cancelled");
    state.live.finish(build.id, build.state);
    Ok(Json(build))
}
