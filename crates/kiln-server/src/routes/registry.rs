//! `/v2/`: each application's channels as a read-only OCI registry, so
//! Istio's `WasmPlugin` (`url: oci://kiln.example:8080/<app>:production`)
//! and any OCI client pull a channel's module. The repository is the
//! application (`<id>` or `app/<id>`), each channel a tag; the image is
//! the module's, built by [`crate::oci`]. A manifest by digest, and its
//! blobs, are found among all of the application's versions, so a pull
//! pinned by digest outlives the channel's next promotion.
//!
//! Readers are those of the channels: an edge token (of this application,
//! or of all of its owner's) or the owner's token, sent as HTTP Basic (the
//! token is the password) or Bearer. An application the reader may not
//! read answers as one that does not exist. Nothing is written here:
//! every other method is refused.

use crate::AppState;
use crate::auth::RegistryReader;
use crate::error::ApiError;
use crate::oci::{self, Image, MANIFEST_MEDIA_TYPE};
use crate::routes::versions::fetch_blob;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kiln_domain::{AppId, ChannelName, Version};
use kiln_store::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The header that tells clients this is a registry (API version 2).
pub const API_VERSION_HEADER: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
const API_VERSION: &str = "registry/2.0";
/// The header carrying the digest of what is served.
const CONTENT_DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");
/// What caches may do with an answer by digest: it never changes, but it
/// took a token.
const BY_DIGEST: &str = "private, max-age=31536000, immutable";
/// A tag moves with its channel.
const BY_TAG: &str = "no-cache";
/// The challenge a client without a token gets.
const CHALLENGE: &str = "Basic realm=\"kiln\"";

/// An error in the distribution spec's shape:
/// `{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "…"}]}`.
#[derive(Debug)]
pub struct RegistryError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`, while a store is down.
    retry_after: Option<u64>,
    /// What went wrong inside kiln, for the server's log only.
    cause: Option<crate::error::InternalCause>,
}

/// The body of every error under `/v2/`, as the distribution spec has it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RegistryErrors {
    /// One error.
    errors: Vec<RegistryErrorEntry>,
}

/// One entry of a registry error body: a code and a sentence.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RegistryErrorEntry {
    /// The spec's code, such as `MANIFEST_UNKNOWN`.
    #[schema(example = "MANIFEST_UNKNOWN")]
    code: &'static str,
    /// A sentence for humans.
    message: String,
}

impl RegistryError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// 401 `UNAUTHORIZED`, with the `WWW-Authenticate` challenge that makes
    /// clients send credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    fn name_unknown(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no repository {name}; a repository is an application: <id> or app/<id>"),
        )
    }

    fn manifest_unknown(name: &str, reference: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("repository {name} has no manifest {reference}"),
        )
    }

    fn blob_unknown(name: &str, digest: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("repository {name} has no blob {digest}"),
        )
    }
}

/// An internal failure keeps its status (500, or 503 with `Retry-After`)
/// and its sentence, which never holds details; [`ApiError::internal`]
/// logged the cause.
impl From<ApiError> for RegistryError {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
            StatusCode::FORBIDDEN => "DENIED",
            StatusCode::NOT_FOUND => "NAME_UNKNOWN",
            _ => "UNKNOWN",
        };
        Self {
            status: e.status,
            code,
            message: e.message,
            retry_after: e.retry_after,
            cause: e.cause,
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = RegistryErrors {
            errors: vec![RegistryErrorEntry {
                code: self.code,
                message: self.message,
            }],
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, seconds.into());
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

type RegistryResult<T> = Result<T, RegistryError>;

/// Marks every answer under `/v2/` as a registry's, refusals included.
pub async fn api_version(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    response
}

/// What a path under `/v2/` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Tags { name: &'a str },
}

impl<'a> Endpoint<'a> {
    /// Parses what follows `/v2/`; `None` for an endpoint kiln does not serve.
    fn parse(rest: &'a str) -> Option<Self> {
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Endpoint::Tags { name });
        }
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            return Some(Endpoint::Manifest { name, reference });
        }
        let (name, digest) = rest.rsplit_once("/blobs/")?;
        Some(Endpoint::Blob { name, digest })
    }
}

/// The application a repository name names (`<id>` or `app/<id>`), if
/// the reader may read it; another owner's, and one outside an edge
/// token's scope, answer as a missing one.
async fn readable_app(
    state: &AppState,
    RegistryReader(reader): RegistryReader,
    name: &str,
) -> RegistryResult<AppId> {
    let raw = name.strip_prefix("app/").unwrap_or(name);
    // Ids are written in lowercase, as repository names must be.
    let app = AppId::parse(raw)
        .ok()
        .filter(|app| app.to_string() == raw && reader.may_read(*app))
        .ok_or_else(|| RegistryError::name_unknown(name))?;
    match state.meta.get_application(reader.owner, app).await {
        Ok(_) => Ok(app),
        Err(StoreError::NotFound) => Err(RegistryError::name_unknown(name)),
        Err(e) => Err(ApiError::internal("reading an application failed", e).into()),
    }
}

/// The image of a version's module: from the cache, or built from the
/// stored `.wasm` (checked against the version's sha256) and its digests
/// recorded, so any server finds the module by them.
async fn image_of(state: &AppState, version: &Version) -> RegistryResult<Arc<Image>> {
    let sha256 = &version.binary_sha256;
    if let Some(image) = state.images.get(sha256) {
        return Ok(image);
    }
    let wasm = fetch_blob(state, &version.binary_location).await?;
    let expected = sha256.clone();
    let built = tokio::task::spawn_blocking(move || {
        let actual = hex::encode(Sha256::digest(&wasm));
        (actual == expected).then(|| Image::build(&wasm))
    })
    .await
    .map_err(|e| ApiError::internal("building an image failed", e))?;
    let image = built.ok_or_else(|| {
        ApiError::internal(
            "building an image failed",
            format!(
                "the stored module of version {} is not its sha256",
                version.id
            ),
        )
    })?;
    state
        .meta
        .record_image(sha256, &image.digests)
        .await
        .map_err(|e| ApiError::internal("recording an image failed", e))?;
    let image = Arc::new(image);
    state.images.insert(sha256, image.clone());
    Ok(image)
}

/// The application's version whose image has a manifest or blob with
/// this digest, once some server has served that image's manifest.
async fn version_by_digest(
    state: &AppState,
    reader: &RegistryReader,
    app: AppId,
    digest: &str,
) -> RegistryResult<Option<Version>> {
    if !oci::is_digest(digest) {
        return Ok(None);
    }
    let module = state
        .meta
        .module_by_image_digest(digest)
        .await
        .map_err(|e| ApiError::internal("looking up a digest failed", e))?;
    let Some(module) = module else {
        return Ok(None);
    };
    Ok(state
        .meta
        .app_version_by_sha256(reader.0.owner, app, &module)
        .await
        .map_err(|e| ApiError::internal("looking up a version failed", e))?)
}

/// A blob or manifest answer: its type, length, digest and caching.
fn content(bytes: Bytes, media_type: &'static str, digest: &str, cache: &'static str) -> Response {
    let length = bytes.len();
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    // Set by hand so a HEAD, which has no body, still says it.
    headers.insert(header::CONTENT_LENGTH, length.into());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    // A digest is `sha256:` and hex: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(digest) {
        headers.insert(CONTENT_DIGEST_HEADER, value.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            headers.insert(header::ETAG, etag);
        }
    }
    response
}

/// The registry's base, which tells a client its token is accepted.
#[utoipa::path(get, path = "/v2/", tag = "registry",
    description = "The OCI registry's base: 200 `{}` with `Docker-Distribution-API-Version: registry/2.0` for an edge or owner token (HTTP Basic with the token as the password, or Bearer); 401 with `WWW-Authenticate: Basic realm=\"kiln\"` without one.",
    responses((status = 200, description = "a registry"), (status = 401, description = "no or an unknown token")),
    security(("edge" = []), ("bearer" = [])))]
pub async fn base(_reader: RegistryReader) -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
}

/// The paging query of a tags list (`/v2/{name}/tags/list`).
#[derive(Debug, Deserialize)]
pub struct TagsQuery {
    /// At most this many tags.
    n: Option<u32>,
    /// Only tags after this one.
    last: Option<String>,
}

/// Every `GET` (and `HEAD`) under `/v2/{name}/`: manifests, blobs, tags.
pub async fn dispatch(
    State(state): State<AppState>,
    reader: RegistryReader,
    Path(rest): Path<String>,
    query: Result<Query<TagsQuery>, QueryRejection>,
) -> RegistryResult<Response> {
    let Some(endpoint) = Endpoint::parse(&rest) else {
        return Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "kiln's registry serves manifests, blobs and tags lists only",
        ));
    };
    match endpoint {
        Endpoint::Manifest { name, reference } => manifest(&state, reader, name, reference).await,
        Endpoint::Blob { name, digest } => blob(&state, reader, name, digest).await,
        Endpoint::Tags { name } => {
            let Query(query) = query.map_err(|e| {
                RegistryError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", e.body_text())
            })?;
            tags(&state, reader, name, query).await
        }
    }
}

#[utoipa::path(get, path = "/v2/{name}/manifests/{reference}", tag = "registry",
    description = "A channel's image manifest (`application/vnd.oci.image.manifest.v1+json`): one layer, a gzipped tar holding the module as `plugin.wasm` (Istio's compat variant). The reference is a channel (a tag; answers `Cache-Control: no-cache`) or a manifest digest of any of the application's versions (immutable). `Docker-Content-Digest` is the manifest's digest. HEAD answers the same headers.",
    params(("name" = String, Path, description = "the application: `<id>` or `app/<id>`"),
        ("reference" = String, Path, description = "a channel name, or `sha256:<hex>`")),
    responses((status = 200, content_type = "application/vnd.oci.image.manifest.v1+json", body = Vec<u8>),
        (status = 401, description = "no or an unknown token"),
        (status = 404, description = "`NAME_UNKNOWN` or `MANIFEST_UNKNOWN`")),
    security(("edge" = []), ("bearer" = [])))]
async fn manifest(
    state: &AppState,
    reader: RegistryReader,
    name: &str,
    reference: &str,
) -> RegistryResult<Response> {
    let app = readable_app(state, reader, name).await?;
    let unknown = || RegistryError::manifest_unknown(name, reference);
    let by_digest = reference.starts_with("sha256:");
    let version = if by_digest {
        version_by_digest(state, &reader, app, reference)
            .await?
            .ok_or_else(unknown)?
    } else {
        let channel = ChannelName::parse(reference).map_err(|_| unknown())?;
        let channel = match state.meta.get_channel(reader.0.owner, app, &channel).await {
            Ok(channel) => channel,
            Err(StoreError::NotFound) => return Err(unknown()),
            Err(e) => return Err(ApiError::internal("reading a channel failed", e).into()),
        };
        state
            .meta
            .get_version(reader.0.owner, channel.version.id)
            .await
            .map_err(|e| ApiError::internal("reading a version failed", e))?
    };
    let image = image_of(state, &version).await?;
    if by_digest && image.digests.manifest != reference {
        return Err(unknown());
    }
    let cache = if by_digest { BY_DIGEST } else { BY_TAG };
    Ok(content(
        image.manifest.clone(),
        MANIFEST_MEDIA_TYPE,
        &image.digests.manifest,
        cache,
    ))
}

#[utoipa::path(get, path = "/v2/{name}/blobs/{digest}", tag = "registry",
    description = "The config or the layer of one of the application's images, by digest (immutable), once its manifest was served. HEAD answers the same headers.",
    params(("name" = String, Path, description = "the application: `<id>` or `app/<id>`"),
        ("digest" = String, Path, description = "`sha256:<hex>`")),
    responses((status = 200, content_type = "application/vnd.oci.image.layer.v1.tar+gzip", body = Vec<u8>),
        (status = 401, description = "no or an unknown token"),
        (status = 404, description = "`NAME_UNKNOWN` or `BLOB_UNKNOWN`")),
    security(("edge" = []), ("bearer" = [])))]
async fn blob(
    state: &AppState,
    reader: RegistryReader,
    name: &str,
    digest: &str,
) -> RegistryResult<Response> {
    let app = readable_app(state, reader, name).await?;
    let unknown = || RegistryError::blob_unknown(name, digest);
    let version = version_by_digest(state, &reader, app, digest)
        .await?
        .ok_or_else(unknown)?;
    let image = image_of(state, &version).await?;
    let (bytes, media_type) = image.blob(digest).ok_or_else(unknown)?;
    Ok(content(bytes, media_type, digest, BY_DIGEST))
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

#[utoipa::path(get, path = "/v2/{name}/tags/list", tag = "registry",
    description = "The application's channels, by name: `{\"name\", \"tags\"}`; `n` and `last` page it (with a `Link: rel=\"next\"` header when more remain).",
    params(("name" = String, Path, description = "the application: `<id>` or `app/<id>`"),
        ("n" = Option<u32>, Query, description = "at most this many"),
        ("last" = Option<String>, Query, description = "only channels after this one")),
    responses((status = 200, description = "the tags"),
        (status = 401, description = "no or an unknown token"),
        (status = 404, description = "`NAME_UNKNOWN`")),
    security(("edge" = []), ("bearer" = [])))]
async fn tags(
    state: &AppState,
    reader: RegistryReader,
    name: &str,
    query: TagsQuery,
) -> RegistryResult<Response> {
    let app = readable_app(state, reader, name).await?;
    let channels = state
        .meta
        .list_channels(reader.0.owner, app)
        .await
        .map_err(|e| ApiError::internal("listing channels failed", e))?;
    // Listed by name, as tags must be.
    let mut tags: Vec<String> = channels
        .into_iter()
        .map(|c| c.name)
        .filter(|tag| query.last.as_ref().is_none_or(|last| tag > last))
        .collect();
    let mut next = None;
    if let Some(n) = query.n.map(|n| n as usize)
        && tags.len() > n
    {
        tags.truncate(n);
        next = tags
            .last()
            .map(|last| format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""));
    }
    let mut response = axum::Json(TagList { name, tags }).into_response();
    // Names and channel names are plain ASCII: always a valid header value.
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Every method but `GET` and `HEAD`: kiln's registry is read-only.
pub async fn read_only() -> Response {
    let refused = RegistryError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "kiln's registry is read-only: images are published by promoting a channel",
    );
    ([(header::ALLOW, "GET, HEAD")], refused).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoint() {
        let id = "0b5c1d0e-3f9a-4c2e-9a57-7d1f3f0e2b11";
        let app = format!("app/{id}");
        assert_eq!(
            Endpoint::parse(&format!("{app}/manifests/production")),
            Some(Endpoint::Manifest {
                name: &app,
                reference: "production"
            })
        );
        assert_eq!(
            Endpoint::parse(&format!("{id}/blobs/sha256:ab")),
            Some(Endpoint::Blob {
                name: id,
                digest: "sha256:ab"
            })
        );
        assert_eq!(
            Endpoint::parse(&format!("{id}/tags/list")),
            Some(Endpoint::Tags { name: id })
        );
        assert_eq!(Endpoint::parse(&format!("{id}/referrers/x")), None);
    }
}
