//! `/application/{id}/channels`: deployments. A channel points at one
//! succeeded version; owners promote and roll back, edge servers (and
//! owners) read, and may wait for the next change (a long poll).

use super::applications::parse_app_id;
use super::versions::parse_build_id;
use crate::AppState;
use crate::auth::{EdgeReader, OwnerToken};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, wait_within};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_domain::{AppId, BuildId, Channel, ChannelName, OwnerId};
use kiln_store::{ChannelRefusal, StoreError};
use serde::Deserialize;
use std::time::Duration;

/// Longest a channel read waits for a change.
pub const MAX_CHANNEL_WAIT: Duration = Duration::from_secs(60);

/// The body of `PUT /application/{id}/channels/{name}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// A succeeded version of this application.
    #[schema(format = Uuid)]
    pub version_id: String,
}

/// The long poll of `GET /application/{id}/channels/{name}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelQuery {
    /// With `after`: seconds to wait for the channel to move past that
    /// revision (0 to 60); 204 when it has not.
    #[param(minimum = 0, maximum = 60)]
    pub wait_seconds: Option<u64>,
    /// A revision the caller already has; the answer is 204 until the
    /// channel is at a later one. 0 waits for a channel not promoted yet.
    pub after: Option<i64>,
}

fn channel_name(raw: &str) -> ApiResult<ChannelName> {
    Ok(ChannelName::parse(raw)?)
}

/// The application, if the reader may read it; another owner's and one
/// outside an edge token's scope answer 404 alike.
async fn readable_app(state: &AppState, reader: &EdgeReader, raw: &str) -> ApiResult<AppId> {
    let app = parse_app_id(raw)?;
    if !reader.may_read(app) {
        return Err(ApiError::not_found("application", raw));
    }
    owned_app(state, reader.owner, raw).await
}

async fn owned_app(state: &AppState, owner: OwnerId, raw: &str) -> ApiResult<AppId> {
    let app = parse_app_id(raw)?;
    state
        .meta
        .get_application(owner, app)
        .await
        .map_err(|e| ApiError::from_store(e, "application", raw))?;
    Ok(app)
}

fn refusal(refused: ChannelRefusal, name: &ChannelName, app: &str) -> ApiError {
    match refused {
        ChannelRefusal::NoSuchVersion => not_a_built_version(app),
        ChannelRefusal::NoSuchChannel => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("application {app} has no channel {name}"),
        ),
        ChannelRefusal::NothingToRollBackTo => ApiError::conflict(
            "nothing_to_roll_back",
            format!("channel {name} has had one version only; there is nothing to roll back to"),
        ),
        ChannelRefusal::PreviousVersionDeleted(version) => ApiError::conflict(
            "previous_version_deleted",
            format!(
                "channel {name} pointed at version {version} before, which was deleted since; \
                 promote a version instead"
            ),
        ),
    }
}

/// Why a version cannot be promoted: an id of nothing the owner has is
/// unknown (404); a build that did not (or not yet) succeed, or another
/// application's version, is not deployable (422).
async fn not_deployable(state: &AppState, owner: OwnerId, version: BuildId, app: &str) -> ApiError {
    match state.meta.get_build(owner, version).await {
        Err(StoreError::NotFound) => ApiError::not_found("version", version),
        Err(e) => ApiError::internal("reading a build failed", e),
        Ok(_) => not_a_built_version(app),
    }
}

fn not_a_built_version(app: &str) -> ApiError {
    ApiError::invalid(format!(
        "that is not a succeeded version of application {app}; only built versions can be deployed"
    ))
}

fn changed(state: &AppState, channel: &Channel, what: &str) {
    state.channel_signal.notify_waiters();
    tracing::info!(application = %channel.application_id, channel = channel.name,
        version = %channel.version.id, revision = channel.revision, "channel {what}");
}

/// Points a channel at a version.
#[utoipa::path(put, path = "/application/{id}/channels/{name}", tag = "channels",
    description = "Points the channel at a succeeded version of the application (creating the channel). Promoting the version it already points at changes nothing.",
    params(("id" = String, Path, description = "application id"), ("name" = String, Path, description = "channel name, e.g. production", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body = Promote,
    responses((status = 200, body = Channel), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn promote(
    State(state): State<AppState>,
    token: OwnerToken,
    Path((id, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Promote>,
) -> ApiResult<Json<Channel>> {
    let app = owned_app(&state, token.owner, &id).await?;
    let name = channel_name(&name)?;
    let version = parse_build_id(&body.version_id, "version")?;
    let promoted = state
        .meta
        .promote(token.owner, app, &name, version, &token.actor())
        .await
        .map_err(|e| ApiError::from_store(e, "channel", &name))?;
    let channel = match promoted {
        Ok(channel) => channel,
        Err(ChannelRefusal::NoSuchVersion) => {
            return Err(not_deployable(&state, token.owner, version, &id).await);
        }
        Err(refused) => return Err(refusal(refused, &name, &id)),
    };
    changed(&state, &channel, "promoted");
    Ok(Json(channel))
}

/// Returns a channel to its previous version.
#[utoipa::path(post, path = "/application/{id}/channels/{name}/rollback", tag = "channels",
    description = "Returns the channel to the version it pointed at before its latest change (a second rollback undoes the first).",
    params(("id" = String, Path, description = "application id"), ("name" = String, Path, description = "channel name", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = Channel), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollback(
    State(state): State<AppState>,
    token: OwnerToken,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<Channel>> {
    let app = owned_app(&state, token.owner, &id).await?;
    let name = channel_name(&name)?;
    let channel = state
        .meta
        .rollback(token.owner, app, &name, &token.actor())
        .await
        .map_err(|e| ApiError::from_store(e, "channel", &name))?
        .map_err(|r| refusal(r, &name, &id))?;
    changed(&state, &channel, "rolled back");
    Ok(Json(channel))
}

/// An application's channels.
#[utoipa::path(get, path = "/application/{id}/channels", tag = "channels",
    description = "The application's channels, each with its version and its latest changes (which version, when, by which token).",
    params(("id" = String, Path, description = "application id")),
    responses((status = 200, body = [Channel]), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("edge" = [])))]
pub async fn list(
    State(state): State<AppState>,
    reader: EdgeReader,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Channel>>> {
    let app = readable_app(&state, &reader, &id).await?;
    let channels = state
        .meta
        .list_channels(reader.owner, app)
        .await
        .map_err(|e| ApiError::internal("listing channels failed", e))?;
    Ok(Json(channels))
}

/// One channel, or its next change (a long poll).
#[utoipa::path(get, path = "/application/{id}/channels/{name}", tag = "channels",
    description = "One channel. With `after=N&wait_seconds=S` it answers as soon as the channel is past revision N, or 204 after S seconds: edge agents long-poll this.",
    params(("id" = String, Path, description = "application id"), ("name" = String, Path, description = "channel name", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ChannelQuery),
    responses((status = 200, body = Channel), (status = 204, description = "no change after `after` within `wait_seconds`"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("edge" = [])))]
pub async fn get(
    State(state): State<AppState>,
    reader: EdgeReader,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ChannelQuery>,
) -> ApiResult<Response> {
    let app = readable_app(&state, &reader, &id).await?;
    let name = channel_name(&name)?;
    if let Some(after) = query.after {
        let wait = wait_within(query.wait_seconds, MAX_CHANNEL_WAIT)?;
        if !wait_for_change(&state, app, &name, after, wait).await? {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let channel = state
        .meta
        .get_channel(reader.owner, app, &name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => refusal(ChannelRefusal::NoSuchChannel, &name, &id),
            e => ApiError::from_store(e, "channel", &name),
        })?;
    Ok(Json(channel).into_response())
}

/// Waits until the channel is past revision `after` (a missing channel is
/// at 0), at most `wait`; whether it is.
async fn wait_for_change(
    state: &AppState,
    app: AppId,
    name: &ChannelName,
    after: i64,
    wait: Duration,
) -> ApiResult<bool> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the look, so a change in between still wakes us.
        let notified = state.channel_signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let revision = state
            .meta
            .channel_revision(app, name)
            .await
            .map_err(|e| ApiError::internal("reading a channel failed", e))?
            .unwrap_or(0);
        if revision > after {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // Other servers sharing the database cannot wake us: look again each second.
        let pause = (deadline - now).min(Duration::from_secs(1));
        let _ = tokio::time::timeout(pause, notified).await;
    }
}
