//! `/artifact/{sha256}.wasm` and `.cwasm?target=`: modules served by
//! content address. The address is the sha256 of the `.wasm`, so what it
//! names never changes: the answers are immutable and cacheable.
//!
//! They take no token. Envoy's remote code source (`code.remote`) cannot
//! send an authorization header and checks the sha256 itself, and the
//! address is learned only from an authenticated read (a version or a
//! channel): knowing the 256-bit hash is the capability, as with a CDN's
//! unlisted URL. The `.cwasm` is signed as from `/version/{id}/binary`
//! (for the oldest version with that module), so an edge verifies it as
//! before.

use super::versions::{blob_response, cwasm_name, fetch_blob};
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiQuery;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_domain::channel::is_sha256_hex;
use kiln_store::{StoreError, keys};
use serde::Deserialize;

/// What caches may do with an answer that never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The query of `GET /artifact/{file}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ArtifactQuery {
    /// For a `.cwasm`: the target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub target: Option<String>,
}

fn no_artifact(file: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no artifact {file}"),
    )
}

/// A module by the sha256 of its `.wasm`; takes no token.
#[utoipa::path(get, path = "/artifact/{file}", tag = "edge",
    description = "A module by content address: `{sha256}.wasm`, or `{sha256}.cwasm?target=TRIPLE` (signed). Needs no token; immutable (`Cache-Control: immutable`, `ETag` = the sha256, `If-None-Match` answers 304).",
    params(("file" = String, Path, description = "`<sha256>.wasm` or `<sha256>.cwasm`"), ArtifactQuery),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 304),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn artifact(
    State(state): State<AppState>,
    Path(file): Path<String>,
    ApiQuery(query): ApiQuery<ArtifactQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (sha256, cwasm) = match (file.strip_suffix(".wasm"), file.strip_suffix(".cwasm")) {
        (Some(sha), _) => (sha, false),
        (_, Some(sha)) => (sha, true),
        _ => return Err(no_artifact(&file)),
    };
    if !is_sha256_hex(sha256) {
        return Err(no_artifact(&file));
    }
    let version = state
        .meta
        .version_by_sha256(sha256)
        .await
        .map_err(|e| ApiError::internal("looking up an artifact failed", e))?
        .ok_or_else(|| no_artifact(&file))?;
    let (key, content_type, etag) = if cwasm {
        let target = query.target.as_deref().ok_or_else(|| {
            ApiError::bad_request("missing_target", "a .cwasm needs target=<triple>")
        })?;
        let name = cwasm_name(target)?;
        let key = keys::artifact(&version.binary_location, &name);
        (
            key,
            "application/octet-stream",
            format!("\"{sha256}-{target}\""),
        )
    } else {
        (
            version.binary_location.clone(),
            "application/wasm",
            format!("\"{sha256}\""),
        )
    };
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match == Some(etag.as_str()) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, IMMUTABLE.to_owned()),
            ],
        )
            .into_response());
    }
    let bytes = if cwasm {
        state.blobs.get(&key).await.map_err(|e| match e {
            StoreError::NotFound => no_artifact(&format!(
                "{file}?target={}",
                query.target.unwrap_or_default()
            )),
            e => ApiError::internal("reading an artifact failed", e),
        })?
    } else {
        fetch_blob(&state, &key).await?
    };
    let mut response = blob_response(bytes, content_type, Some(etag));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    Ok(response)
}
