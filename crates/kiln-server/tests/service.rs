//! The use-cases' refusals, through `router()` without a network: each
//! answers its status with the JSON error body, and loses nothing (no
//! row, no blob left behind). On SQLite and a blob directory.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use kiln_server::{AppState, ServerConfig, auth, router};
use kiln_store::{BlobStore, MetaStore};
use serde_json::Value;
use tower::ServiceExt;

const WORKER_TOKEN: &str = "worker-token-for-service-tests";
const BOUNDARY: &str = "kiln-test-boundary";

struct Kiln {
    state: AppState,
    token: String,
    app: String,
    _dir: tempfile::TempDir,
}

async fn kiln(configure: impl FnOnce(&mut ServerConfig)) -> Kiln {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let meta = MetaStore::connect(&url).await.unwrap();
    let blobs = BlobStore::local(&dir.path().join("blobs")).unwrap();
    let owner = meta.create_owner("tests").await.unwrap();
    let token = auth::new_owner_token();
    meta.add_token(owner, &auth::hash_token(&token))
        .await
        .unwrap();
    let app = meta.create_application(owner, "app", "").await.unwrap();
    let key = kiln_wasm::signing::new_signing_key().unwrap();
    let artifacts = kiln_server::artifacts::Precompiler::new(&[], key).unwrap();
    let mut config = ServerConfig::new(auth::hash_token(WORKER_TOKEN));
    configure(&mut config);
    Kiln {
        state: AppState::new(meta, blobs, config, artifacts),
        token,
        app: app.id.to_string(),
        _dir: dir,
    }
}

/// A multipart body of `(name, bytes)` fields.
fn form(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        let disposition = if *name == "source_code" || *name == "binary" || *name == "logs" {
            format!("form-data; name=\"{name}\"; filename=\"{name}\"")
        } else {
            format!("form-data; name=\"{name}\"")
        };
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A `.tar.gz` of a crate with a manifest at its root.
fn crate_archive() -> Vec<u8> {
    kiln_testkit::archive::tar_gz(&[
        (
            "Cargo.toml",
            b"[package]\nname = \"p\"\nversion = \"0.1.0\"\n",
        ),
        ("src/lib.rs", b"\n"),
    ])
}

fn upload_form(app: &str, version: &str, source: &[u8]) -> Vec<u8> {
    form(&[
        ("plugin_id", app.as_bytes()),
        ("version", version.as_bytes()),
        ("plugin_language", b"rust"),
        ("phases", br#"["request_headers"]"#),
        ("source_code", source),
    ])
}

async fn send(
    kiln: &Kiln,
    method: Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router(kiln.state.clone())
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{status}: not JSON: {bytes:?}"))
    };
    (status, json)
}

async fn upload(kiln: &Kiln, body: Vec<u8>) -> (StatusCode, Value) {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let headers = [("content-type", content_type.as_str())];
    send(kiln, Method::POST, "/version", &kiln.token, &headers, body).await
}

/// Every blob key in the store.
async fn blob_keys(kiln: &Kiln) -> Vec<String> {
    let listed = kiln.state.blobs.list_dated("").await.unwrap();
    listed.into_iter().map(|(key, _)| key).collect()
}

fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error says what is wrong in a sentence: {body}"
    );
}

#[tokio::test]
async fn an_upload_is_refused_with_its_reason_and_leaves_nothing() {
    let kiln = kiln(|_| {}).await;
    let app = kiln.app.clone();

    let no_token = send(&kiln, Method::POST, "/version", "", &[], Vec::new()).await;
    assert_error(&no_token, StatusCode::UNAUTHORIZED, "unauthorized");
    let not_a_form = send(
        &kiln,
        Method::POST,
        "/version",
        &kiln.token,
        &[],
        Vec::new(),
    )
    .await;
    assert_error(
        &not_a_form,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let no_plugin = upload(&kiln, form(&[("version", b"1.0.0")])).await;
    assert_error(&no_plugin, StatusCode::BAD_REQUEST, "missing_field");
    let bad_version = upload(&kiln, upload_form(&app, "one", &crate_archive())).await;
    assert_error(
        &bad_version,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    );
    let unknown_app = "0190c0de-0000-7000-8000-000000000000";
    let no_app = upload(&kiln, upload_form(unknown_app, "1.0.0", &crate_archive())).await;
    assert_error(&no_app, StatusCode::NOT_FOUND, "not_found");
    let not_an_archive = upload(&kiln, upload_form(&app, "1.0.0", b"plain text")).await;
    assert_error(
        &not_an_archive,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_archive",
    );
    let corrupt = upload(&kiln, upload_form(&app, "1.0.0", &[0x1f, 0x8b, 8, 0, 1, 2])).await;
    assert_error(
        &corrupt,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_archive",
    );
    assert!(
        blob_keys(&kiln).await.is_empty(),
        "a refused upload stores nothing"
    );

    let (status, build) = upload(&kiln, upload_form(&app, "1.0.0", &crate_archive())).await;
    assert_eq!(status, StatusCode::CREATED, "{build}");
    assert_eq!(build["state"], "queued");
    let stored = blob_keys(&kiln).await;
    assert_eq!(stored.len(), 1, "the source is stored: {stored:?}");
    let duplicate = upload(&kiln, upload_form(&app, "1.0.0", &crate_archive())).await;
    assert_error(&duplicate, StatusCode::CONFLICT, "duplicate_version");
    assert_eq!(
        blob_keys(&kiln).await,
        stored,
        "a duplicate version's source is removed again"
    );
}

#[tokio::test]
async fn an_owner_past_its_unfinished_builds_gets_429() {
    let kiln = kiln(|config| config.max_unfinished_builds = 1).await;
    let first = upload(&kiln, upload_form(&kiln.app, "1.0.0", &crate_archive())).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let second = upload(&kiln, upload_form(&kiln.app, "1.0.1", &crate_archive())).await;
    assert_error(&second, StatusCode::TOO_MANY_REQUESTS, "too_many_builds");
    assert_eq!(blob_keys(&kiln).await.len(), 1);
}

/// Queues a build and claims it as the shared worker: its id and lease.
async fn claimed_build(kiln: &Kiln) -> (String, String) {
    let (status, build) = upload(kiln, upload_form(&kiln.app, "1.0.0", &crate_archive())).await;
    assert_eq!(status, StatusCode::CREATED, "{build}");
    let path = "/internal/builds/claim?wait_seconds=0";
    let (status, claim) = send(kiln, Method::POST, path, WORKER_TOKEN, &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let id = claim["build"]["id"].as_str().unwrap().to_owned();
    (id, claim["lease_id"].as_str().unwrap().to_owned())
}

async fn report(kiln: &Kiln, path: &str, lease: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let headers = [
        ("content-type", content_type.as_str()),
        ("x-kiln-lease", lease),
    ];
    send(kiln, Method::POST, path, WORKER_TOKEN, &headers, body).await
}

#[tokio::test]
async fn a_refused_report_changes_nothing_and_says_why() {
    let kiln = kiln(|_| {}).await;
    let (id, lease) = claimed_build(&kiln).await;
    let stored = blob_keys(&kiln).await;
    let success = format!("/build_success/{id}");
    let module = form(&[("binary", b"\0asm\x01\0\0\0"), ("logs", b"built")]);

    let owner_token = send(&kiln, Method::POST, &success, &kiln.token, &[], Vec::new()).await;
    assert_error(&owner_token, StatusCode::UNAUTHORIZED, "unauthorized");
    let other_lease = "0190c0de-0000-7000-8000-000000000001";
    let stale = report(&kiln, &success, other_lease, module.clone()).await;
    assert_error(&stale, StatusCode::CONFLICT, "lease_lost");
    let not_a_plugin = report(&kiln, &success, &lease, module).await;
    assert_error(
        &not_a_plugin,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_module",
    );
    let native = form(&[("binary", b"\0asm"), ("cwasm.x86_64", b"native")]);
    let native = report(&kiln, &success, &lease, native).await;
    assert_error(
        &native,
        StatusCode::UNPROCESSABLE_ENTITY,
        "native_code_refused",
    );
    let no_logs = report(&kiln, &format!("/build_fail/{id}"), &lease, form(&[])).await;
    assert_error(&no_logs, StatusCode::BAD_REQUEST, "missing_field");
    assert_eq!(
        blob_keys(&kiln).await,
        stored,
        "a refused report stores nothing"
    );

    let (status, build) = send(
        &kiln,
        Method::GET,
        &format!("/version_build/{id}"),
        &kiln.token,
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{build}");
    assert_eq!(
        build["state"], "running",
        "the build still runs under its lease"
    );

    let failed = form(&[("logs", b"error[E0425]"), ("error", b"it did not compile")]);
    let (status, build) = report(&kiln, &format!("/build_fail/{id}"), &lease, failed).await;
    assert_eq!(status, StatusCode::OK, "{build}");
    assert_eq!(build["state"], "failed");
    let again = form(&[("logs", b"again")]);
    let late = report(&kiln, &format!("/build_crash/{id}"), &lease, again).await;
    assert_error(&late, StatusCode::CONFLICT, "lease_lost");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let kiln = kiln(|_| {}).await;
    let missing = send(&kiln, Method::GET, "/no/such/thing", "", &[], Vec::new()).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    let method = send(&kiln, Method::DELETE, "/healthz", "", &[], Vec::new()).await;
    assert_error(
        &method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let no_build = send(
        &kiln,
        Method::GET,
        "/version_build/not-an-id",
        &kiln.token,
        &[],
        Vec::new(),
    )
    .await;
    assert_error(&no_build, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn an_internal_error_names_its_request_and_hides_its_cause() {
    let kiln = kiln(|_| {}).await;
    let (id, lease) = claimed_build(&kiln).await;
    // The source the row names is gone: reading it is kiln's own failure.
    for key in blob_keys(&kiln).await {
        kiln.state.blobs.delete(&key).await.unwrap();
    }
    let request = Request::get(format!("/internal/builds/{id}/source"))
        .header(header::AUTHORIZATION, format!("Bearer {WORKER_TOKEN}"))
        .header("x-kiln-lease", &lease)
        .body(Body::empty())
        .unwrap();
    let response = router(kiln.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"], "internal_error", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&request_id), "{message}");
    assert!(
        !message.contains("apps/") && !message.contains("source"),
        "the cause stays in the log: {message}"
    );
}

#[tokio::test]
async fn a_json_body_is_one_object_with_each_key_once() {
    let kiln = kiln(|_| {}).await;
    let json = [("content-type", "application/json")];
    let post = |body: &str| {
        send(
            &kiln,
            Method::POST,
            "/application",
            &kiln.token,
            &json,
            body.as_bytes().to_vec(),
        )
    };
    let twice = post(r#"{"name": "a", "name": "b"}"#).await;
    assert_error(&twice, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    let array = post(r#"["a", ""]"#).await;
    assert_error(&array, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    let broken = post(r#"{"name": "#).await;
    assert_error(&broken, StatusCode::BAD_REQUEST, "malformed_json");
    let untyped = send(
        &kiln,
        Method::POST,
        "/application",
        &kiln.token,
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_error(
        &untyped,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, app) = post(r#"{"name": "edge-auth"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
}
