//! While a store is down the API says so: 503 with the JSON error body and
//! `Retry-After`, never a 500 or a hang; `/healthz` stays the liveness
//! check and `/readyz` names what is down. Through `router()`, on SQLite
//! whose pool is closed under the running server.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use kiln_server::{AppState, ServerConfig, auth, router};
use kiln_store::{BlobStore, MetaStore};
use tower::ServiceExt;

async fn state(dir: &std::path::Path) -> (AppState, String) {
    let url = format!("sqlite://{}", dir.join("kiln.db").display());
    let meta = MetaStore::connect(&url).await.unwrap();
    let blobs = BlobStore::local(&dir.join("blobs")).unwrap();
    let owner = meta.create_owner("tests").await.unwrap();
    let token = auth::new_owner_token();
    meta.add_token(owner, &auth::hash_token(&token))
        .await
        .unwrap();
    let key = kiln_wasm::signing::new_signing_key().unwrap();
    let artifacts = kiln_server::artifacts::Precompiler::new(&[], key).unwrap();
    let config = ServerConfig::new(auth::hash_token("worker-token-for-tests"));
    (AppState::new(meta, blobs, config, artifacts), token)
}

async fn get(state: &AppState, path: &str, token: &str) -> axum::response::Response {
    let request = Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    router(state.clone()).oneshot(request).await.unwrap()
}

async fn json(response: axum::response::Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_database_outage_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (state, token) = state(dir.path()).await;
    let r = get(&state, "/application", &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = get(&state, "/readyz", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["status"], "ok");

    state.meta.close().await;
    let r = get(&state, "/application", &token).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    assert!(
        r.headers().contains_key("x-request-id"),
        "every answer names its request, to find it in the log"
    );
    let body = json(r).await;
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("the database"),
        "{body}"
    );
    let r = get(&state, "/healthz", "").await;
    assert_eq!(r.status(), StatusCode::OK, "the process is alive");
    let r = get(&state, "/readyz", "").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    let body = json(r).await;
    assert_eq!(
        (body["database"].as_str(), body["blobs"].as_str()),
        (Some("unavailable"), Some("ok")),
        "{body}"
    );
}
