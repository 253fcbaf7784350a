//! The public and worker APIs end to end, against the real binary, on
//! SQLite and PostgreSQL. The tests play the worker over the internal API.

mod common;

use common::{Db, Kiln, small_crate, zip};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

const PHASES: &str = r#"["request_headers","response_headers"]"#;

async fn error_of(r: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.expect("error bodies are JSON");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    body
}

async fn claim(kiln: &Kiln) -> Option<Value> {
    claim_as(kiln, &kiln.worker_token).await
}

/// Claims as the worker holding `token`.
async fn claim_as(kiln: &Kiln, token: &str) -> Option<Value> {
    let r = kiln
        .worker_as(token, Method::POST, "/internal/builds/claim")
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::NO_CONTENT => None,
        StatusCode::OK => Some(r.json().await.unwrap()),
        s => panic!("claim answered {s}"),
    }
}

fn lease(claim: &Value) -> String {
    claim["lease_id"].as_str().unwrap().to_owned()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

async fn report(
    kiln: &Kiln,
    kind: &str,
    build: &str,
    lease: &str,
    form: reqwest::multipart::Form,
) -> reqwest::Response {
    report_as(kiln, &kiln.worker_token, kind, build, lease, form).await
}

/// Reports as the worker holding `token`.
async fn report_as(
    kiln: &Kiln,
    token: &str,
    kind: &str,
    build: &str,
    lease: &str,
    form: reqwest::multipart::Form,
) -> reqwest::Response {
    kiln.worker_as(token, Method::POST, &format!("/{kind}/{build}"))
        .header("x-kiln-lease", lease)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

fn success_form(binary: &[u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "binary",
            reqwest::multipart::Part::bytes(binary.to_vec()).file_name("plugin.wasm"),
        )
        .part(
            "logs",
            reqwest::multipart::Part::text("compiled fine\n").file_name("build.log"),
        )
        .text("profile", r#"{"stages_ms":{"compile":5}}"#)
}

/// The smallest module the server takes for a plugin.
static WASM: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(common::tiny_plugin);

async fn auth_is_required(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let r = kiln
        .http
        .get(kiln.url("/application"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;
    let r = kiln
        .http
        .get(kiln.url("/application"))
        .bearer_auth("kiln_nope")
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;
    // The worker token is not an owner token, and the other way round.
    let r = kiln
        .http
        .get(kiln.url("/application"))
        .bearer_auth(&kiln.worker_token)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;
    let r = kiln.post("/internal/builds/claim").send().await.unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;
    let r = kiln.http.get(kiln.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn applications_crud_and_tenancy(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = kiln.create_app("edge-auth").await;
    assert_eq!(app["name"], "edge-auth");
    assert_eq!(app["owner_id"], 1);
    let app_id = id(&app);

    let listed: Value = kiln
        .get("/application")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([app.clone()]));
    let got: Value = kiln
        .get(&format!("/application/{app_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, app);

    let r = kiln
        .patch(&format!("/application/{app_id}"))
        .json(&json!({"notes": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(
        (patched["name"].as_str(), patched["notes"].as_str()),
        (Some("edge-auth"), Some("v2"))
    );

    // Another owner sees none of it: 404, exactly like a missing id.
    let other = kiln.token_for_owner(2);
    let as_other = |m: Method, p: &str| kiln.http.request(m, kiln.url(p)).bearer_auth(&other);
    let listed: Value = as_other(Method::GET, "/application")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    for method in [Method::GET, Method::DELETE] {
        let r = as_other(method, &format!("/application/{app_id}"))
            .send()
            .await
            .unwrap();
        let foreign = error_of(r, StatusCode::NOT_FOUND).await;
        let missing_id = uuid::Uuid::new_v4();
        let r = kiln
            .get(&format!("/application/{missing_id}"))
            .send()
            .await
            .unwrap();
        let missing = error_of(r, StatusCode::NOT_FOUND).await;
        assert_eq!(foreign["error"], missing["error"]);
    }
    let r = as_other(Method::PATCH, &format!("/application/{app_id}"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;

    let r = kiln
        .delete(&format!("/application/{app_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = kiln
        .get(&format!("/application/{app_id}"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
}

async fn bad_application_input(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let r = kiln
        .post("/application")
        .json(&json!({"name": "  "}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln
        .post("/application")
        .json(&json!({"notes": "no name"}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln
        .post("/application")
        .json(&json!({"name": "a", "colour": "red"}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln
        .post("/application")
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::BAD_REQUEST).await;
    let r = kiln
        .post("/application")
        .body(r#"{"name":"a"}"#)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let r = kiln.get("/application/not-a-uuid").send().await.unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    let r = kiln.get("/no/such/endpoint").send().await.unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    let listed: Value = kiln
        .get("/application")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]), "a refused request created nothing");
}

async fn upload_queues_a_build_with_its_source_stored(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let build = kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await;
    assert_eq!(build["state"], "queued");
    assert_eq!(build["version"], "1.0.0");
    assert_eq!(build["language"], "rust");
    assert_eq!(
        build["phases"],
        json!(["request_headers", "response_headers"])
    );
    assert_eq!(build["conf"], "hello");
    assert_eq!(
        build["options"],
        json!({"optimize": true, "precompile": true, "preinit": true})
    );
    assert_eq!(
        kiln.blob_files().len(),
        1,
        "the source is stored before the 201"
    );
    assert_eq!(kiln.build(&id(&build)).await["state"], "queued");

    // A zip is as good as a tar.gz.
    let zipped = zip(&[
        ("Cargo.toml", b"[package]\nname=\"z\"\nversion=\"0.1.0\"\n"),
        ("src/lib.rs", b""),
    ]);
    let fields = [
        ("plugin_id", app.as_str()),
        ("version", "1.1.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
    ];
    let r = kiln
        .upload(&kiln.admin_token, &fields, Some(("src.zip", zipped)))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // The post-build steps can be turned off per version.
    let fields = [
        ("plugin_id", app.as_str()),
        ("version", "1.2.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
        ("options", r#"{"optimize": false}"#),
    ];
    let r = kiln
        .upload(
            &kiln.admin_token,
            &fields,
            Some(("src.tar.gz", small_crate())),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let build: Value = r.json().await.unwrap();
    assert_eq!(
        build["options"],
        json!({"optimize": false, "precompile": true, "preinit": true})
    );
    let fields = [
        ("plugin_id", app.as_str()),
        ("version", "1.3.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
        ("options", r#"{"turbo": true}"#),
    ];
    let r = kiln
        .upload(
            &kiln.admin_token,
            &fields,
            Some(("src.tar.gz", small_crate())),
        )
        .await;
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
}

async fn bad_uploads_are_refused_and_store_nothing(db: Db) {
    let Some(kiln) = Kiln::start(db, &["--max-upload-mib", "1"]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await;
    let blobs_before = kiln.blob_files();
    let other = kiln.token_for_owner(2);
    let missing_app = uuid::Uuid::new_v4().to_string();

    let good: Vec<(&str, &str)> = vec![
        ("plugin_id", &app),
        ("version", "2.0.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
    ];
    let with = |key: &str, value: &'static str| -> Vec<(String, String)> {
        good.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    if *k == key {
                        value.to_string()
                    } else {
                        v.to_string()
                    },
                )
            })
            .collect()
    };
    let without = |key: &str| -> Vec<(String, String)> {
        good.iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // (what, form fields, uploaded file, expected status, expected error code)
    type Case<'a> = (
        &'a str,
        Vec<(String, String)>,
        Option<(&'a str, Vec<u8>)>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "bad semver",
            with("version", "1.0"),
            Some(("s.tar.gz", small_crate())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "unknown language",
            with("plugin_language", "cobol"),
            Some(("s.tar.gz", small_crate())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "unknown phase",
            with("phases", r#"["request_trailers"]"#),
            Some(("s.tar.gz", small_crate())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "phases not JSON",
            with("phases", "request_headers"),
            Some(("s.tar.gz", small_crate())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "missing version",
            without("version"),
            Some(("s.tar.gz", small_crate())),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            "missing source",
            good.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None,
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            "not an archive",
            with("version", "2.0.0"),
            Some(("s.tar.gz", b"#!/bin/sh\necho hi\n".to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_archive",
        ),
        (
            "truncated gzip",
            with("version", "2.0.0"),
            Some(("s.tar.gz", small_crate()[..20].to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_archive",
        ),
        (
            "unknown application",
            with("plugin_id", "00000000-0000-4000-8000-000000000000"),
            Some(("s.tar.gz", small_crate())),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "duplicate version",
            with("version", "1.0.0"),
            Some(("s.tar.gz", small_crate())),
            StatusCode::CONFLICT,
            "duplicate_version",
        ),
    ];
    for (name, fields, file, status, code) in cases {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = kiln.upload(&kiln.admin_token, &fields, file).await;
        assert_eq!(r.status(), status, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{name}: {body}");
    }
    // A foreign application is as unknown as a missing one.
    let fields = [
        ("plugin_id", app.as_str()),
        ("version", "3.0.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
    ];
    let r = kiln
        .upload(&other, &fields, Some(("s.tar.gz", small_crate())))
        .await;
    error_of(r, StatusCode::NOT_FOUND).await;
    let fields = [
        ("plugin_id", missing_app.as_str()),
        ("version", "3.0.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
    ];
    let r = kiln
        .upload(
            &kiln.admin_token,
            &fields,
            Some(("s.tar.gz", small_crate())),
        )
        .await;
    error_of(r, StatusCode::NOT_FOUND).await;
    // Over the limit: refused from the declared length, before the body is read...
    let boundary = "kilnboundary";
    let fields = [
        ("plugin_id", app.as_str()),
        ("version", "4.0.0"),
        ("plugin_language", "rust"),
        ("phases", PHASES),
    ];
    let big = vec![0x1f; 4 * 1024 * 1024];
    let body = common::multipart_body(boundary, &fields, ("source_code", &big));
    let headers = [
        ("Authorization", format!("Bearer {}", kiln.admin_token)),
        (
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        ),
        ("Content-Length", body.len().to_string()),
    ];
    let (status, answer) = common::raw_post(&kiln.base, "/version", &headers, body);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // ...and, without a declared length, while streaming: the file field
    // is cut at the limit.
    let body = common::multipart_body(boundary, &fields, ("source_code", &big[..1536 * 1024]));
    let chunked = format!("{:x}\r\n", body.len())
        .into_bytes()
        .into_iter()
        .chain(body)
        .chain(b"\r\n0\r\n\r\n".iter().copied())
        .collect();
    let headers = [
        ("Authorization", format!("Bearer {}", kiln.admin_token)),
        (
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        ),
        ("Transfer-Encoding", "chunked".to_owned()),
    ];
    let (status, answer) = common::raw_post(&kiln.base, "/version", &headers, chunked);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Not multipart at all.
    let r = kiln
        .post("/version")
        .json(&json!({"plugin_id": app}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    assert_eq!(
        kiln.blob_files(),
        blobs_before,
        "a refused upload left a blob"
    );
    let builds: Value = kiln
        .get("/version_build")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        builds.as_array().unwrap().len(),
        1,
        "a refused upload left a build"
    );
}

async fn a_worker_builds_and_the_version_is_served(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    assert!(claim(&kiln).await.is_none(), "an empty queue answers 204");
    let build = kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await;
    let build_id = id(&build);
    assert_eq!(build["worker"], Value::Null, "no worker has claimed it");

    let claimed = claim(&kiln).await.expect("the queued build");
    assert_eq!(claimed["build"]["id"], build_id.as_str());
    assert_eq!(claimed["build"]["state"], "running");
    assert_eq!(claimed["build"]["attempt"], 1);
    // The shared --worker-token is the worker named `default`.
    assert_eq!(claimed["build"]["worker"], "default");
    let lease = lease(&claimed);
    assert!(
        claim(&kiln).await.is_none(),
        "a running build is not claimed twice"
    );
    assert_eq!(kiln.build(&build_id).await["state"], "running");

    // Source download and heartbeat need the lease.
    let source_path = claimed["source_path"].as_str().unwrap();
    let r = kiln
        .worker(Method::GET, source_path)
        .header("x-kiln-lease", &lease)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        small_crate_bytes_of(&kiln, &build_id).await
    );
    let stale = uuid::Uuid::new_v4().to_string();
    let r = kiln
        .worker(Method::GET, source_path)
        .header("x-kiln-lease", &stale)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::CONFLICT).await;
    let hb = format!("/internal/builds/{build_id}/heartbeat");
    let r = kiln
        .worker(Method::POST, &hb)
        .header("x-kiln-lease", &lease)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = kiln
        .worker(Method::POST, &hb)
        .header("x-kiln-lease", &stale)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::CONFLICT).await;

    // A report under a stale lease changes nothing and stores nothing.
    let blobs_before = kiln.blob_files();
    let r = report(
        &kiln,
        "build_success",
        &build_id,
        &stale,
        success_form(&WASM),
    )
    .await;
    error_of(r, StatusCode::CONFLICT).await;
    assert_eq!(kiln.blob_files(), blobs_before);
    assert_eq!(kiln.build(&build_id).await["state"], "running");
    let r = report(
        &kiln,
        "build_success",
        &build_id,
        &lease,
        success_form(b"not wasm"),
    )
    .await;
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    // The server checks the module itself: a worker's word is not enough.
    let r = report(
        &kiln,
        "build_success",
        &build_id,
        &lease,
        success_form(b"\0asm\x01\0\0\0"),
    )
    .await;
    let refused = error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(refused["error"], "invalid_module", "{refused}");
    // Native code never comes from a worker.
    let native = success_form(&WASM).part(
        "cwasm.x86_64-unknown-linux-gnu",
        reqwest::multipart::Part::bytes(b"\x7fELF machine code".to_vec()).file_name("plugin.cwasm"),
    );
    let r = report(&kiln, "build_success", &build_id, &lease, native).await;
    let refused = error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(refused["error"], "native_code_refused", "{refused}");
    // What a worker says of the timings has one shape, within bounds.
    for profile in [
        r#"{"stages_ms":{"compile":5},"html":"<script>"}"#.to_owned(),
        format!(r#"{{"sandbox":"{}"}}"#, "x".repeat(65)),
        r#"{"stages_ms":{"compile":-1}}"#.to_owned(),
    ] {
        let form = reqwest::multipart::Form::new()
            .part(
                "binary",
                reqwest::multipart::Part::bytes(WASM.to_vec()).file_name("plugin.wasm"),
            )
            .text("profile", profile);
        let r = report(&kiln, "build_success", &build_id, &lease, form).await;
        error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    assert_eq!(kiln.blob_files(), blobs_before, "nothing was stored");
    assert_eq!(kiln.build(&build_id).await["state"], "running");

    let r = report(
        &kiln,
        "build_success",
        &build_id,
        &lease,
        success_form(&WASM),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let version: Value = r.json().await.unwrap();
    let sha = hex::encode(Sha256::digest(&*WASM));
    assert_eq!(version["id"], build_id.as_str());
    assert_eq!(version["binary_sha256"], sha.as_str());
    assert_eq!(version["binary_size"], WASM.len());

    let done = kiln.build(&build_id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["profile"]["stages_ms"]["compile"], 5);
    // Operators see the wait, the stage and who built it.
    let metrics = kiln
        .http
        .get(kiln.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "kiln_queue_wait_seconds_count 1",
        "kiln_build_stage_duration_seconds_count{stage=\"compile\"} 1",
        "kiln_builds_finished_total{worker=\"default\",state=\"succeeded\"} 1",
        "kiln_db_pool_connections ",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    // The same report again: the lease is spent.
    let r = report(
        &kiln,
        "build_success",
        &build_id,
        &lease,
        success_form(&WASM),
    )
    .await;
    error_of(r, StatusCode::CONFLICT).await;

    let r = kiln
        .get(&format!("/version/{build_id}/binary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/wasm");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    assert_eq!(r.bytes().await.unwrap().as_ref(), WASM.as_slice());
    let r = kiln
        .get(&format!("/version/{build_id}/binary"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = kiln
        .get(&format!("/version/{build_id}/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "compiled fine\n");
    let r = kiln
        .get(&format!("/version_build/{build_id}/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "compiled fine\n");
    let r = kiln
        .get(&format!("/version/{build_id}/source"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/gzip");
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        small_crate_bytes_of(&kiln, &build_id).await
    );
    let listed: Value = kiln
        .get(&format!("/version?application_id={app}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // The server precompiled it itself, signed for this version.
    let r = kiln
        .get(&format!(
            "/version/{build_id}/binary?format=cwasm&target=x86_64-unknown-linux-gnu"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let signed = r.bytes().await.unwrap();
    assert!(signed.starts_with(b"KILNSIG1"));
    let signed_for = format!("\"version_id\":\"{build_id}\"");
    assert!(String::from_utf8_lossy(&signed).contains(&signed_for));

    // Another owner cannot read any of it.
    let other = kiln.token_for_owner(2);
    for path in ["", "/binary", "/source", "/logs"] {
        let r = kiln
            .http
            .get(kiln.url(&format!("/version/{build_id}{path}")))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        error_of(r, StatusCode::NOT_FOUND).await;
    }
    let r = kiln
        .http
        .get(kiln.url(&format!("/version_build/{build_id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
}

/// The stored source of a build, read through the API once it has a version.
async fn small_crate_bytes_of(_kiln: &Kiln, _build: &str) -> Vec<u8> {
    // Archives are stored byte for byte; the test uploads exactly this.
    small_crate()
}

async fn a_failed_build_keeps_logs_and_makes_no_version(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let r = kiln
        .get(&format!("/version_build/{build_id}/logs"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    let claimed = claim(&kiln).await.unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "logs",
            reqwest::multipart::Part::text("error[E0308]: mismatched types\n")
                .file_name("build.log"),
        )
        .text("error", "the compiler exited with status 101");
    let r = report(&kiln, "build_fail", &build_id, &lease(&claimed), form).await;
    assert_eq!(r.status(), StatusCode::OK);
    let build = kiln.build(&build_id).await;
    assert_eq!(build["state"], "failed");
    assert_eq!(build["error"], "the compiler exited with status 101");
    let logs = kiln.logs(&build_id).await;
    assert!(logs.contains("E0308"));
    let r = kiln
        .get(&format!("/version/{build_id}"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    // A failed version number can be uploaded again.
    kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await;
}

async fn crashes_are_retried_then_final(db: Db) {
    let Some(kiln) = Kiln::start(db, &["--max-attempts", "2"]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    for (attempt, expected) in [(1, "queued"), (2, "crashed")] {
        let claimed = claim(&kiln).await.expect("queued again");
        assert_eq!(claimed["build"]["attempt"], attempt);
        let form = reqwest::multipart::Form::new().text("error", "disk full");
        let r = report(&kiln, "build_crash", &build_id, &lease(&claimed), form).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(kiln.build(&build_id).await["state"], expected);
    }
    assert!(claim(&kiln).await.is_none());
}

async fn an_expired_lease_is_requeued(db: Db) {
    let Some(kiln) = Kiln::start(
        db,
        &["--lease-seconds", "3", "--reap-interval-seconds", "1"],
    )
    .await
    else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let first = claim(&kiln).await.unwrap();
    // The worker goes silent; the reaper puts the build back.
    let build = kiln
        .wait_for_state(&build_id, &["queued"], Duration::from_secs(20))
        .await;
    assert_eq!(build["attempt"], 1);
    let second = claim(&kiln).await.expect("the build is claimable again");
    assert_eq!(second["build"]["attempt"], 2);
    let r = report(
        &kiln,
        "build_success",
        &build_id,
        &lease(&first),
        success_form(&WASM),
    )
    .await;
    error_of(r, StatusCode::CONFLICT).await;
}

async fn cancel_stops_queued_and_running_builds(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let queued = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let r = kiln
        .post(&format!("/version_build/{queued}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "cancelled");
    let r = kiln
        .post(&format!("/version_build/{queued}/cancel"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::CONFLICT).await;

    let running = id(&kiln.upload_ok(&app, "1.1.0", PHASES, small_crate()).await);
    let claimed = claim(&kiln).await.unwrap();
    let r = kiln
        .post(&format!("/version_build/{running}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let hb = format!("/internal/builds/{running}/heartbeat");
    let r = kiln
        .worker(Method::POST, &hb)
        .header("x-kiln-lease", lease(&claimed))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::CONFLICT).await;
    let other = kiln.token_for_owner(2);
    let r = kiln
        .http
        .post(kiln.url(&format!("/version_build/{running}/cancel")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
}

fn upload_fields<'a>(app: &'a str, version: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("plugin_id", app),
        ("version", version),
        ("plugin_language", "rust"),
        ("phases", PHASES),
    ]
}

async fn an_owner_has_a_limit_of_unfinished_builds(db: Db) {
    let Some(kiln) = Kiln::start(db, &["--max-unfinished-builds", "2"]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let first = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    kiln.upload_ok(&app, "1.0.1", PHASES, small_crate()).await;
    let blobs = kiln.blob_files();
    let refused = kiln
        .upload(
            &kiln.admin_token,
            &upload_fields(&app, "1.0.2"),
            Some(("src.tar.gz", small_crate())),
        )
        .await;
    let error = error_of(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(error["error"], "too_many_builds", "{error}");
    assert_eq!(kiln.blob_files(), blobs, "the refused source is not stored");
    // Another owner has a limit of its own.
    let other = kiln.token_for_owner(2);
    let others_app = kiln
        .http
        .post(kiln.url("/application"))
        .bearer_auth(&other)
        .json(&serde_json::json!({"name": "b", "notes": ""}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let r = kiln
        .upload(
            &other,
            &upload_fields(&id(&others_app), "1.0.0"),
            Some(("src.tar.gz", small_crate())),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // A finished (here: cancelled) build makes room again.
    let r = kiln
        .post(&format!("/version_build/{first}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    kiln.upload_ok(&app, "1.0.2", PHASES, small_crate()).await;
}

async fn build_listing_filters_and_pages(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let other_app = id(&kiln.create_app("b").await);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(id(&kiln
            .upload_ok(&app, &format!("1.0.{i}"), PHASES, small_crate())
            .await));
    }
    kiln.upload_ok(&other_app, "1.0.0", PHASES, small_crate())
        .await;
    kiln.post(&format!("/version_build/{}/cancel", ids[0]))
        .send()
        .await
        .unwrap();

    let r = kiln
        .get(&format!("/version_build?application_id={app}&limit=2"))
        .send()
        .await
        .unwrap();
    let next = r.headers()["link"].to_str().unwrap().to_owned();
    let page: Value = r.json().await.unwrap();
    let got: Vec<_> = page.as_array().unwrap().iter().map(id).collect();
    assert_eq!(got, vec![ids[2].clone(), ids[1].clone()], "newest first");
    // The next page starts after the last build shown (a keyset cursor).
    let after = format!("after={}", ids[1]);
    assert!(next.contains(&after), "{next}");
    let next_path = next
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    let r = kiln.get(&next_path).send().await.unwrap();
    assert!(r.headers().get("link").is_none());
    let page: Value = r.json().await.unwrap();
    assert_eq!(
        page.as_array().unwrap().iter().map(id).collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );

    let cancelled: Value = kiln
        .get("/version_build?state=cancelled")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cancelled
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );
    let r = kiln.get("/version_build?state=done").send().await.unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln.get("/version_build?limit=0").send().await.unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln.get("/version_build?limit=ten").send().await.unwrap();
    error_of(r, StatusCode::BAD_REQUEST).await;
}

async fn succeed(kiln: &Kiln, app: &str, version: &str) -> String {
    let build_id = id(&kiln.upload_ok(app, version, PHASES, small_crate()).await);
    let claimed = claim(kiln).await.unwrap();
    let r = report(
        kiln,
        "build_success",
        &build_id,
        &lease(&claimed),
        success_form(&WASM),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    build_id
}

async fn versions_patch_and_delete_with_their_blobs(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let v1 = succeed(&kiln, &app, "1.0.0").await;
    let v2 = succeed(&kiln, &app, "1.1.0").await;

    let r = kiln
        .patch(&format!("/version/{v1}"))
        .json(&json!({"version": "1.1.0"}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::CONFLICT).await;
    let r = kiln
        .patch(&format!("/version/{v1}"))
        .json(&json!({"version": "one"}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln
        .patch(&format!("/version/{v1}"))
        .json(&json!({"phases": ["body"]}))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = kiln
        .patch(&format!("/version/{v1}"))
        .json(&json!({"version": "1.0.1", "phases": ["log"], "conf": "c2", "notes": "hotfix"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["version"], "1.0.1");
    assert_eq!(patched["phases"], json!(["log"]));
    assert_eq!(patched["conf"], "c2");

    let blobs_before = kiln.blob_files().len();
    let r = kiln.delete(&format!("/version/{v1}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        kiln.blob_files().len(),
        blobs_before - 4,
        "source, binary, logs and the signed .cwasm are deleted"
    );
    let r = kiln.get(&format!("/version/{v1}")).send().await.unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    let r = kiln
        .get(&format!("/version_build/{v1}"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;

    // Deleting the application takes everything else with it.
    kiln.upload_ok(&app, "2.0.0", PHASES, small_crate()).await;
    let r = kiln
        .delete(&format!("/application/{app}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        kiln.blob_files().is_empty(),
        "blobs left: {:?}",
        kiln.blob_files()
    );
    let r = kiln.get(&format!("/version/{v2}")).send().await.unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    let builds: Value = kiln
        .get("/version_build")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(builds, json!([]));
}

async fn queued_builds_survive_a_restart(db: Db) {
    let Some(mut kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let admin = kiln.admin_token.clone();
    kiln.restart().await;
    assert_eq!(kiln.admin_token, admin);
    assert_eq!(kiln.build(&build_id).await["state"], "queued");
    let claimed = claim(&kiln).await.expect("still queued after the restart");
    assert_eq!(claimed["build"]["id"], build_id.as_str());
}

async fn health_metrics_and_openapi(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await;
    let health: Value = kiln
        .http
        .get(kiln.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = kiln
        .http
        .get(kiln.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kiln_builds{state=\"queued\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_queue_depth 1"), "{metrics}");
    assert!(
        metrics.contains(
            "kiln_http_requests_total{method=\"POST\",route=\"/application\",status=\"201\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_http_request_duration_seconds_bucket"),
        "{metrics}"
    );

    let doc: Value = kiln
        .http
        .get(kiln.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/application",
        "/application/{id}",
        "/version",
        "/version/{id}",
        "/version/{id}/binary",
        "/version/{id}/source",
        "/version/{id}/logs",
        "/version/{id}/try",
        "/version_build",
        "/version_build/{id}",
        "/version_build/{id}/logs",
        "/version_build/{id}/cancel",
        "/internal/builds/claim",
        "/internal/builds/{id}/heartbeat",
        "/internal/builds/{id}/source",
        "/build_success/{id}",
        "/build_fail/{id}",
        "/build_crash/{id}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    let build = &doc["components"]["schemas"]["VersionBuild"]["properties"];
    assert!(
        build["worker"].is_object(),
        "VersionBuild lacks worker: {build}"
    );
}

/// Heartbeat, source and every report as the worker holding `token`, under
/// `lease`: the statuses, in that order.
async fn act_on_build(kiln: &Kiln, token: &str, build: &str, lease: &str) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    let hb = format!("/internal/builds/{build}/heartbeat");
    let source = format!("/internal/builds/{build}/source");
    for (method, path) in [(Method::POST, &hb), (Method::GET, &source)] {
        let r = kiln
            .worker_as(token, method, path)
            .header("x-kiln-lease", lease)
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    let logs = || {
        reqwest::multipart::Form::new().part(
            "logs",
            reqwest::multipart::Part::text("log\n").file_name("build.log"),
        )
    };
    for (kind, form) in [
        ("build_success", success_form(&WASM)),
        ("build_fail", logs()),
        ("build_crash", logs()),
    ] {
        let r = report_as(kiln, token, kind, build, lease, form).await;
        statuses.push(r.status());
    }
    statuses
}

async fn each_worker_acts_only_on_builds_it_claimed(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let a = kiln.token_for_worker("build-host-a");
    let b = kiln.token_for_worker("build-host-b");
    assert!(a.starts_with("kilnw_") && a != b);
    for (name, says) in [
        ("build-host-a", "already exists"),
        ("default", "reserved"),
        ("bad name", "worker name"),
    ] {
        let out = kiln.cli(&["token", "create", "--worker", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    }
    // A worker token is not an owner token.
    let r = kiln
        .http
        .get(kiln.url("/application"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;

    let app = id(&kiln.create_app("a").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let claimed = claim_as(&kiln, &a).await.expect("the queued build");
    assert_eq!(claimed["build"]["worker"], "build-host-a");
    let lease = lease(&claimed);
    let before = kiln.build(&build_id).await;
    assert_eq!(before["worker"], "build-host-a");

    // B, and the shared worker, holding A's valid lease id are refused as
    // a stale lease is, and change nothing.
    let blobs = kiln.blob_files();
    for other in [&b, &kiln.worker_token] {
        let statuses = act_on_build(&kiln, other, &build_id, &lease).await;
        assert_eq!(statuses, [StatusCode::CONFLICT; 5], "{statuses:?}");
    }
    let r = kiln
        .worker_as(
            &b,
            Method::POST,
            &format!("/internal/builds/{build_id}/heartbeat"),
        )
        .header("x-kiln-lease", &lease)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r, StatusCode::CONFLICT).await["error"],
        "lease_lost"
    );
    assert_eq!(kiln.blob_files(), blobs, "a refused report stores nothing");
    assert_eq!(kiln.build(&build_id).await, before);

    // A's own lease still works, and the record names A once it is built.
    let r = kiln
        .worker_as(
            &a,
            Method::POST,
            &format!("/internal/builds/{build_id}/heartbeat"),
        )
        .header("x-kiln-lease", &lease)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = report_as(
        &kiln,
        &a,
        "build_success",
        &build_id,
        &lease,
        success_form(&WASM),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let built = kiln.build(&build_id).await;
    assert_eq!(built["state"], "succeeded");
    assert_eq!(built["worker"], "build-host-a");
}

async fn revoked_tokens_are_refused_at_once(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let a = kiln.token_for_worker("build-host-a");
    let app = id(&kiln.create_app("a").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let claimed = claim_as(&kiln, &a).await.expect("the queued build");
    let lease = lease(&claimed);

    let said = kiln.cli_ok(&["token", "revoke", &a]);
    assert!(
        said.contains("worker build-host-a") && said.contains("1 were queued again"),
        "{said}"
    );
    // A's next request is refused, and its build is queued again.
    let statuses = act_on_build(&kiln, &a, &build_id, &lease).await;
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 5], "{statuses:?}");
    let r = kiln
        .worker_as(&a, Method::POST, "/internal/builds/claim")
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;
    let requeued = kiln.build(&build_id).await;
    assert_eq!(requeued["state"], "queued");
    assert_eq!(requeued["attempt"], 1);
    assert_eq!(
        requeued["error"],
        "its worker's token was revoked; queued again"
    );
    let again = claim(&kiln).await.expect("another worker takes it");
    assert_eq!(again["build"]["attempt"], 2);
    assert_eq!(again["build"]["worker"], "default");

    // Revoking again, an unknown worker, or the shared token: clear refusals.
    for (args, says) in [
        (
            vec!["token", "revoke", "--worker", "build-host-a"],
            "revoked already",
        ),
        (
            vec!["token", "revoke", "--worker", "nobody"],
            "no worker named nobody",
        ),
        (vec!["token", "revoke", &a], "no live token"),
        (
            vec!["token", "revoke", &kiln.worker_token],
            "shared worker token",
        ),
    ] {
        let out = kiln.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let listed = kiln.cli_ok(&["token", "list"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("build-host-a"))
        .unwrap();
    assert!(
        !line.trim_end().ends_with('-'),
        "listed as revoked: {listed}"
    );

    // An owner's token: refused from the next request; its others still work.
    let other = kiln.token_for_owner(2);
    let spare = kiln.token_for_owner(2);
    let apps = |token: String| {
        let request = kiln.http.get(kiln.url("/application")).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(apps(other.clone()).await.status(), StatusCode::OK);
    let said = kiln.cli_ok(&["token", "revoke", &other]);
    assert!(said.contains("owner 2"), "{said}");
    error_of(apps(other).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(apps(spare).await.status(), StatusCode::OK);
}

async fn channels_deploy_versions_to_edge_readers(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("a").await);
    let other_app = id(&kiln.create_app("b").await);
    let v1 = succeed(&kiln, &app, "1.0.0").await;
    let v2 = succeed(&kiln, &app, "2.0.0").await;
    let queued = id(&kiln.upload_ok(&app, "3.0.0", PHASES, small_crate()).await);
    let edge =
        last_line(&kiln.cli_ok(&["token", "create", "--edge", "--owner", "1", "--app", &app]));
    assert!(edge.starts_with("kilne_"), "{edge}");
    let elsewhere = last_line(&kiln.cli_ok(&[
        "token", "create", "--edge", "--owner", "1", "--app", &other_app,
    ]));
    let out = kiln.cli(&["token", "create", "--edge", "--owner", "1", "--app", &v1]);
    assert!(
        !out.status.success(),
        "an edge token for an unknown application"
    );
    let channel = |name: &str| format!("/application/{app}/channels/{name}");
    let promote = |name: String, version: String| {
        kiln.http
            .put(kiln.url(&name))
            .bearer_auth(&kiln.admin_token)
            .json(&json!({ "version_id": version }))
            .send()
    };
    let as_edge = |token: &str, path: &str| kiln.http.get(kiln.url(path)).bearer_auth(token).send();

    // Only built versions of this application are deployed.
    let r = promote(channel("production"), queued.clone())
        .await
        .unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = promote(channel("no/such"), v1.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = promote(channel("bad name!"), v1.clone()).await.unwrap();
    error_of(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = as_edge(&edge, &channel("production")).await.unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;

    let r = promote(channel("production"), v1.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let prod: Value = r.json().await.unwrap();
    assert_eq!(
        (prod["revision"].as_i64(), prod["version"]["id"].as_str()),
        (Some(1), Some(v1.as_str()))
    );
    // What the edge runs of a deployed version does not change under it.
    let r = kiln
        .patch(&format!("/version/{v1}"))
        .json(&json!({"conf": "changed"}))
        .send()
        .await
        .unwrap();
    let refused = error_of(r, StatusCode::CONFLICT).await;
    assert_eq!(refused["error"], "version_deployed", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("production"));
    let r = kiln
        .patch(&format!("/version/{v1}"))
        .json(&json!({"notes": "still fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "its notes may change");
    let by = prod["history"][0]["by"].as_str().unwrap();
    assert!(by.starts_with("owner 1, token "), "{by}");
    let sha = prod["version"]["binary_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(prod["version"]["artifact"], format!("/artifact/{sha}.wasm"));

    // An edge token reads its application's channels, and nothing else.
    let r = as_edge(&edge, &format!("/application/{app}/channels"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed[0]["name"], "production");
    let r = as_edge(&elsewhere, &channel("production")).await.unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
    let r = as_edge(&edge, &format!("/application/{app}"))
        .await
        .unwrap();
    error_of(r, StatusCode::FORBIDDEN).await;
    let r = as_edge(&edge, &format!("/version/{v1}/binary"))
        .await
        .unwrap();
    error_of(r, StatusCode::FORBIDDEN).await;
    let r = kiln
        .http
        .put(kiln.url(&channel("production")))
        .bearer_auth(&edge)
        .json(&json!({ "version_id": v2 }))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::FORBIDDEN).await;

    // A long poll answers 204 when nothing changed, and at once on a change.
    let started = std::time::Instant::now();
    let r = as_edge(
        &edge,
        &format!("{}?after=1&wait_seconds=1", channel("production")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");
    let waiting = {
        let url = kiln.url(&format!(
            "{}?after=1&wait_seconds=30",
            channel("production")
        ));
        let request = kiln.http.get(url).bearer_auth(&edge);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = request.send().await.unwrap();
            (
                r.status(),
                started.elapsed(),
                r.json::<Value>().await.unwrap(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = promote(channel("production"), v2.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, waited, moved) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        waited < Duration::from_secs(10),
        "answered on the change: {waited:?}"
    );
    assert_eq!(
        (moved["revision"].as_i64(), moved["version"]["id"].as_str()),
        (Some(2), Some(v2.as_str()))
    );

    // A deployed version cannot be deleted; the refusal names the channel.
    let r = kiln.delete(&format!("/version/{v2}")).send().await.unwrap();
    let body = error_of(r, StatusCode::CONFLICT).await;
    assert!(
        body["message"].as_str().unwrap().contains("production"),
        "{body}"
    );

    // Rollback returns to the version before.
    let r = kiln
        .post(&format!("{}/rollback", channel("production")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let back: Value = r.json().await.unwrap();
    assert_eq!(
        (back["revision"].as_i64(), back["version"]["id"].as_str()),
        (Some(3), Some(v1.as_str()))
    );
    let actions: Vec<_> = back["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["rollback", "promote", "promote"]);
    assert_eq!(
        kiln.delete(&format!("/version/{v2}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let r = kiln
        .post(&format!("{}/rollback", channel("production")))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::CONFLICT).await;
    let r = kiln
        .post(&format!("{}/rollback", channel("staging")))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;

    // Artifacts by content address: no token, immutable.
    let r = kiln
        .http
        .get(kiln.url(&format!("/artifact/{sha}.wasm")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{sha}\""));
    let bytes = r.bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    let r = kiln
        .http
        .get(kiln.url(&format!("/artifact/{sha}.wasm")))
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let r = kiln
        .http
        .get(kiln.url(&format!("/artifact/{sha}.cwasm?target={triple}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.bytes().await.unwrap().starts_with(b"KILNSIG1"),
        "signed as from /version"
    );
    let r = kiln
        .http
        .get(kiln.url(&format!("/artifact/{sha}.cwasm")))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::BAD_REQUEST).await;
    for missing in [
        format!("{}.wasm", "0".repeat(64)),
        "..%2Fetc.wasm".into(),
        format!("{sha}.zip"),
    ] {
        let r = kiln
            .http
            .get(kiln.url(&format!("/artifact/{missing}")))
            .send()
            .await
            .unwrap();
        error_of(r, StatusCode::NOT_FOUND).await;
    }

    // A revoked edge token is refused from the next request.
    let said = kiln.cli_ok(&["token", "revoke", &edge]);
    assert!(said.contains("edge token of owner 1"), "{said}");
    let r = as_edge(&edge, &format!("/application/{app}/channels"))
        .await
        .unwrap();
    error_of(r, StatusCode::UNAUTHORIZED).await;
}

fn last_line(out: &str) -> String {
    out.lines().last().unwrap().trim().to_owned()
}

macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() { super::$case(super::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() { super::$case(super::Db::Postgres).await })*
        }
    };
}

on_both_databases!(
    auth_is_required,
    applications_crud_and_tenancy,
    bad_application_input,
    upload_queues_a_build_with_its_source_stored,
    bad_uploads_are_refused_and_store_nothing,
    a_worker_builds_and_the_version_is_served,
    a_failed_build_keeps_logs_and_makes_no_version,
    crashes_are_retried_then_final,
    an_expired_lease_is_requeued,
    cancel_stops_queued_and_running_builds,
    an_owner_has_a_limit_of_unfinished_builds,
    build_listing_filters_and_pages,
    versions_patch_and_delete_with_their_blobs,
    queued_builds_survive_a_restart,
    health_metrics_and_openapi,
    each_worker_acts_only_on_builds_it_claimed,
    revoked_tokens_are_refused_at_once,
    channels_deploy_versions_to_edge_readers,
);

/// An archive as large as the default limits take: 180 MiB unpacked in
/// four files of 45 MiB (the per-file limit is 50), sparse enough to
/// compress under the 20 MiB upload limit and the ratio limit of 200.
fn largest_archive() -> Vec<u8> {
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut content = vec![0u8; 45 << 20];
    for byte in content.iter_mut().step_by(64) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let names: Vec<String> = (0..4).map(|i| format!("data/{i}.bin")).collect();
    let files: Vec<(&str, &[u8], u32)> = names
        .iter()
        .map(|name| (name.as_str(), &content[..], 0o644))
        .collect();
    kiln_testkit::archive::tar_gz_modes(&files, flate2::Compression::fast())
}

/// Inspecting an upload decompresses the whole archive; the API goes on
/// answering while the largest are inspected, even when it has a single
/// thread to answer on.
#[tokio::test]
async fn the_api_answers_while_the_largest_archives_are_inspected() {
    let one_thread = vec![("TOKIO_WORKER_THREADS".to_owned(), "1".to_owned())];
    let kiln = Kiln::start_with_env(vec!["--workers".into(), "0".into()], one_thread);
    let app = id(&kiln.create_app("big").await);
    let archive = largest_archive();
    assert!(archive.len() < 20 << 20, "{} bytes", archive.len());
    let uploads: Vec<_> = (0..3)
        .map(|i| {
            let fields = [
                ("plugin_id", app.clone()),
                ("version", format!("1.0.{i}")),
                ("plugin_language", "rust".into()),
                ("phases", PHASES.into()),
            ];
            let form = fields
                .into_iter()
                .fold(reqwest::multipart::Form::new(), |f, (k, v)| f.text(k, v))
                .part(
                    "source_code",
                    reqwest::multipart::Part::bytes(archive.clone()).file_name("big.tar.gz"),
                );
            tokio::spawn(kiln.post("/version").multipart(form).send())
        })
        .collect();
    let mut probes = Vec::new();
    while uploads.iter().any(|u| !u.is_finished()) {
        let started = std::time::Instant::now();
        let r = kiln.http.get(kiln.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        probes.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for upload in uploads {
        let r = upload.await.unwrap().unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "the archive is within the limits"
        );
    }
    // Inspecting one of these archives takes tens of milliseconds: on the
    // request thread, about half the probes would wait for one.
    probes.sort();
    let (median, slowest) = (probes[probes.len() / 2], probes[probes.len() - 1]);
    assert!(median < Duration::from_millis(20), "{probes:?}");
    assert!(slowest < Duration::from_millis(100), "{probes:?}");
}

/// Two reports of one build at once (a worker that retries, or a hostile
/// one): one is taken, the other refused, and what is stored is the one
/// taken, whole.
#[tokio::test]
async fn simultaneous_reports_store_one_of_them_whole() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let app = id(&kiln.create_app("twice").await);
    let build_id = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let claimed = claim(&kiln).await.unwrap();
    let lease = lease(&claimed);
    // A second valid module: the first with a custom section appended.
    let mut other = WASM.clone();
    other.extend_from_slice(&[0, 6, 5, b'o', b't', b'h', b'e', b'r']);
    let (a, b) = tokio::join!(
        report(
            &kiln,
            "build_success",
            &build_id,
            &lease,
            success_form(&WASM)
        ),
        report(
            &kiln,
            "build_success",
            &build_id,
            &lease,
            success_form(&other)
        ),
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let version: Value = kiln
        .get(&format!("/version/{build_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = kiln
        .get(&format!("/version/{build_id}/binary"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        version["binary_sha256"],
        hex::encode(Sha256::digest(&stored)),
        "the stored binary is the one recorded"
    );
    let r = kiln
        .get(&format!(
            "/version/{build_id}/binary?format=cwasm&target=x86_64-unknown-linux-gnu"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "its signed .cwasm is there");
}

/// `kiln fsck` finds what a crash or a lost object left: a blob no row owns
/// (an upload stored, then the server died before its row) and a row whose
/// blob is gone; `--repair` removes only the orphan.
#[tokio::test]
async fn fsck_finds_orphans_and_missing_blobs_and_repairs_orphans() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let app = id(&kiln.create_app("fsck").await);
    let kept = id(&kiln.upload_ok(&app, "1.0.0", PHASES, small_crate()).await);
    let lost = id(&kiln.upload_ok(&app, "1.0.1", PHASES, small_crate()).await);
    let builds = kiln.data_dir().join("blobs/apps").join(&app).join("builds");
    let orphan = builds.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("source.tar.gz"), small_crate()).unwrap();
    std::fs::remove_file(builds.join(&lost).join("source.tar.gz")).unwrap();
    let fsck = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["fsck", "--json", "--data-dir"])
            .arg(kiln.data_dir())
            .args(extra)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.success(), report)
    };
    let (clean, report) = fsck(&[]);
    assert!(!clean, "a missing blob is an error: {report}");
    let missing = report["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{report}");
    assert!(missing[0].as_str().unwrap().contains(&lost));
    let orphans = report["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{report}");
    assert_eq!(report["removed"], 0, "read-only by default");
    assert!(orphan.join("source.tar.gz").exists());
    // Within the grace period an orphan may be a write in flight: kept.
    let (_, report) = fsck(&["--repair"]);
    assert_eq!(report["removed"], 0, "{report}");
    let (_, report) = fsck(&["--repair", "--grace-minutes", "0"]);
    assert_eq!(report["removed"], 1, "{report}");
    assert!(!orphan.join("source.tar.gz").exists());
    assert!(
        builds.join(&kept).join("source.tar.gz").exists(),
        "owned blobs stay"
    );
}

/// On SIGTERM a server under load finishes what it is answering and then
/// stops: no client sees a 5xx or a cut answer, only, once it is gone, a
/// refused connection (or, on a kept-alive connection it closes, a request
/// not taken, which a client sends again elsewhere).
#[tokio::test]
async fn a_draining_server_fails_no_request() {
    let mut kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let app = id(&kiln.create_app("drain").await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (http, base, token, app) = (
                kiln.http.clone(),
                kiln.base.clone(),
                kiln.admin_token.clone(),
                app.clone(),
            );
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut answered, mut refused) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = if i % 2 == 0 {
                        http.get(format!("{base}/application/{app}"))
                    } else {
                        http.get(format!("{base}/version_build?application_id={app}"))
                    };
                    match request.bearer_auth(&token).send().await {
                        Ok(r) => {
                            assert!(!r.status().is_server_error(), "{}", r.status());
                            r.bytes().await.expect("a whole answer");
                            answered += 1;
                        }
                        // Refused, or an idle kept-alive connection the
                        // server closed as it drained: nothing was answered.
                        Err(e) if e.is_connect() || e.is_request() => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("an answer failed during the drain: {e}"),
                    }
                }
                (answered, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::task::spawn_blocking(move || {
        kiln.stop();
        kiln
    });
    let _kiln = stopping.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = (0, 0);
    for client in clients {
        let (answered, refused) = client.await.unwrap();
        total = (total.0 + answered, total.1 + refused);
    }
    assert!(total.0 > 10, "the clients were answered before: {total:?}");
    assert!(total.1 > 0, "and refused once it had stopped: {total:?}");
}

/// The blob store on a real S3-compatible server.
#[tokio::test]
async fn s3_blob_store_end_to_end() {
    let Ok(endpoint) = std::env::var("KILN_TEST_S3_ENDPOINT") else {
        assert!(
            !common::services_required(),
            "KILN_TEST_S3_ENDPOINT is required"
        );
        eprintln!("skipped: KILN_TEST_S3_ENDPOINT is not set (scripts/test sets it)");
        return;
    };
    let bucket = std::env::var("KILN_TEST_S3_BUCKET").unwrap();
    let kiln = Kiln::start_with(vec![
        "--workers".into(),
        "0".into(),
        "--blob-store".into(),
        format!("s3://{bucket}"),
        "--s3-endpoint".into(),
        endpoint,
    ]);
    let app = id(&kiln.create_app("a").await);
    let build_id = succeed(&kiln, &app, "1.0.0").await;
    let r = kiln
        .get(&format!("/version/{build_id}/binary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), WASM.as_slice());
    let r = kiln
        .get(&format!("/version/{build_id}/source"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), small_crate());
    assert!(
        kiln.blob_files().is_empty(),
        "nothing goes to the local directory"
    );
    let r = kiln
        .delete(&format!("/application/{app}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = kiln
        .get(&format!("/version/{build_id}/binary"))
        .send()
        .await
        .unwrap();
    error_of(r, StatusCode::NOT_FOUND).await;
}

/// A node that should run trials in the sandbox and cannot refuses them,
/// rather than running plugins in its own process.
#[tokio::test]
async fn without_a_sandbox_trials_are_refused() {
    let kiln = Kiln::start_with(vec![
        "--workers".into(),
        "0".into(),
        "--sandbox-user".into(),
        "kiln-no-such-user".into(),
    ]);
    let r = kiln
        .post(&format!("/version/{}/try", uuid::Uuid::new_v4()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"], "trials_unavailable", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("kiln-no-such-user"),
        "{error}"
    );
}

/// A nonsense limit is refused at start, with the flag named.
/// A setting that cannot work stops `kiln serve` at start, with a sentence
/// that names its flag.
#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    let serve = ["serve", "--listen", "127.0.0.1:0", "--workers", "0"];
    let worker = [
        "worker",
        "--server",
        "http://127.0.0.1:9",
        "--worker-token",
        "t",
    ];
    let revoke = ["token", "revoke", "--worker", "w"];
    let edge = [
        "edge",
        "--server",
        "http://127.0.0.1:9",
        "--app",
        "a",
        "--edge-token",
        "t",
        "--dir",
        "/nonexistent/kiln-edge",
    ];
    for (command, flag, value) in [
        (&serve[..], "--build-idle-timeout", "0"),
        (&serve, "--lease-seconds", "2"),
        (&serve, "--max-attempts", "0"),
        (&serve, "--max-unfinished-builds", "0"),
        (&serve, "--reap-interval-seconds", "0"),
        (&serve, "--build-timeout", "0"),
        (&worker, "--workers", "0"),
        (&revoke, "--max-attempts", "0"),
        (&edge, "--wait-seconds", "0"),
        (&edge, "--wait-seconds", "61"),
        (&edge, "--retry-seconds", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(command)
            .env("KILN_DATA_DIR", dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{command:?} {flag} {value} was taken"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{stderr}");
    }
}
