//! Bearer-token authentication. Tokens are random 256-bit strings; only
//! their sha256 is stored, so a database leak does not leak tokens. A slow
//! password hash buys nothing for tokens of this entropy.

use crate::AppState;
use crate::error::ApiError;
use crate::routes::registry::RegistryError;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use kiln_domain::{AppId, OwnerId, WorkerName};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of owner tokens, so a leaked one is recognisable in logs and scans.
const OWNER_TOKEN_PREFIX: &str = "kiln_";
const WORKER_TOKEN_PREFIX: &str = "kilnw_";
const EDGE_TOKEN_PREFIX: &str = "kilne_";

/// The hex sha256 of `token`: what is stored of a token and looked up.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A new random owner token: `kiln_` and 64 hex digits.
pub fn new_owner_token() -> String {
    random_token(OWNER_TOKEN_PREFIX)
}

/// A new random worker token: `kilnw_` and 64 hex digits.
pub fn new_worker_token() -> String {
    random_token(WORKER_TOKEN_PREFIX)
}

/// A read-only token of an edge server (`kiln token create --edge`).
pub fn new_edge_token() -> String {
    random_token(EDGE_TOKEN_PREFIX)
}

/// What a record says about the token that made a change: the first 12
/// hex digits of its sha256, enough to tell an owner's tokens apart and
/// useless for logging in.
pub fn token_fingerprint(token_hash: &str) -> &str {
    token_hash.get(..12).unwrap_or(token_hash)
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be: Bearer <token>"))
}

/// The authenticated owner of a public API request.
#[derive(Debug, Clone, Copy)]
pub struct Owner(pub OwnerId);

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = OwnerToken::from_request_parts(parts, state).await?;
        Ok(Owner(token.owner))
    }
}

/// The authenticated owner, with the fingerprint of the token presented,
/// for the records that say who made a change.
#[derive(Debug, Clone)]
pub struct OwnerToken {
    /// The owner the token belongs to.
    pub owner: OwnerId,
    /// See [`token_fingerprint`].
    pub fingerprint: String,
}

impl OwnerToken {
    /// How a change record names this token.
    pub fn actor(&self) -> String {
        format!("owner {}, token {}", self.owner, self.fingerprint)
    }
}

impl FromRequestParts<AppState> for OwnerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let hash = hash_token(token);
        match state.meta.owner_by_token(&hash).await {
            Ok(Some(owner)) => Ok(OwnerToken {
                owner,
                fingerprint: token_fingerprint(&hash).to_owned(),
            }),
            Ok(None) if token.starts_with(EDGE_TOKEN_PREFIX) => {
                match state.meta.edge_by_token(&hash).await {
                    Ok(Some(_)) => Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "an edge token only reads channels and artifacts; this takes an owner's token",
                    )),
                    Ok(None) => Err(ApiError::unauthorized("unknown or revoked token")),
                    Err(e) => Err(ApiError::internal("token lookup failed", e)),
                }
            }
            Ok(None) => Err(ApiError::unauthorized("unknown or revoked token")),
            Err(e) => Err(ApiError::internal("token lookup failed", e)),
        }
    }
}

/// A reader of channels and artifacts: an edge token (of one owner, and
/// of one application when it was made with `--app`), or an owner's own
/// token, which reads everything of its owner. Only channel reads and
/// artifact downloads take it.
#[derive(Debug, Clone, Copy)]
pub struct EdgeReader {
    /// The owner whose channels and artifacts may be read.
    pub owner: OwnerId,
    /// The one application an edge token may read; `None` for all of the owner's.
    pub app: Option<AppId>,
}

impl EdgeReader {
    /// Whether this reader may read `app` (which must also be the owner's;
    /// the store checks that).
    pub fn may_read(&self, app: AppId) -> bool {
        self.app.is_none_or(|only| only == app)
    }
}

impl EdgeReader {
    /// The reader holding `token`: an owner's token or an edge token;
    /// `None` when it is neither, or revoked.
    pub async fn from_token(state: &AppState, token: &str) -> Result<Option<Self>, ApiError> {
        let hash = hash_token(token);
        match state.meta.owner_by_token(&hash).await {
            Ok(Some(owner)) => return Ok(Some(EdgeReader { owner, app: None })),
            Ok(None) => {}
            Err(e) => return Err(ApiError::internal("token lookup failed", e)),
        }
        match state.meta.edge_by_token(&hash).await {
            Ok(found) => Ok(found.map(|(owner, app)| EdgeReader { owner, app })),
            Err(e) => Err(ApiError::internal("token lookup failed", e)),
        }
    }
}

impl FromRequestParts<AppState> for EdgeReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        EdgeReader::from_token(state, bearer(parts)?)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))
    }
}

/// A reader of the OCI registry (`/v2/`): an [`EdgeReader`] whose token
/// came as OCI clients send one, in HTTP Basic (any user name, the token
/// as the password: `skopeo --creds edge:TOKEN`, a Kubernetes
/// `docker-registry` secret) or as `Bearer`. Refusals are in the
/// registry's error shape, with the `WWW-Authenticate` challenge clients
/// need to send credentials at all.
#[derive(Debug, Clone, Copy)]
pub struct RegistryReader(pub EdgeReader);

/// The token in a registry request's `Authorization` header.
fn registry_token(parts: &Parts) -> Option<String> {
    use base64::Engine;
    let header = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let header = header.to_str().ok()?.trim();
    let (scheme, value) = header.split_once(' ')?;
    let value = value.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        value.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        // Some clients put a lone token in the user name.
        if password.is_empty() { user } else { password }.to_owned()
    } else {
        return None;
    };
    Some(token).filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for RegistryReader {
    type Rejection = RegistryError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, RegistryError> {
        let token = registry_token(parts).ok_or_else(|| {
            RegistryError::unauthorized(
                "send an edge or owner token: HTTP Basic with the token as the password, or Bearer",
            )
        })?;
        match EdgeReader::from_token(state, &token).await? {
            Some(reader) => Ok(RegistryReader(reader)),
            None => Err(RegistryError::unauthorized("unknown or revoked token")),
        }
    }
}

/// A request from a worker, and which worker it is: the holder of a
/// worker token from the store (`kiln token create --worker NAME`), or of the
/// server's shared token (`--worker-token`), the worker named `default`.
/// Looked up on every request, so a revoked token is refused from the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker(pub WorkerName);

impl FromRequestParts<AppState> for Worker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = hash_token(bearer(parts)?);
        if hash == state.config.worker_token_hash {
            return Ok(Worker(WorkerName::shared()));
        }
        match state.meta.worker_by_token(&hash).await {
            Ok(Some(name)) => Ok(Worker(name)),
            Ok(None) => Err(ApiError::unauthorized(
                "this endpoint takes a worker token; this one is unknown or revoked",
            )),
            Err(e) => Err(ApiError::internal("worker token lookup failed", e)),
        }
    }
}
