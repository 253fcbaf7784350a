//! Bearer-token authentication. Tokens are random 256-bit strings; only
//! their sha256 is stored, so a database leak does not leak tokens. A slow
//! password hash buys nothing for tokens of this entropy.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kiln_domain::{OwnerId, WorkerName};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of owner tokens, so a leaked one is recognisable in logs and scans.
const OWNER_TOKEN_PREFIX: &str = "kiln_";
const WORKER_TOKEN_PREFIX: &str = "kilnw_";

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

pub fn new_owner_token() -> String {
    random_token(OWNER_TOKEN_PREFIX)
}

pub fn new_worker_token() -> String {
    random_token(WORKER_TOKEN_PREFIX)
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
        let token = bearer(parts)?;
        match state.meta.owner_by_token(&hash_token(token)).await {
            Ok(Some(owner)) => Ok(Owner(owner)),
            Ok(None) => Err(ApiError::unauthorized("unknown or revoked token")),
            Err(e) => Err(ApiError::internal("token lookup failed", e)),
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
