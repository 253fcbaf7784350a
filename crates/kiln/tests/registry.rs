//! Channels as an OCI registry, end to end: a `--workers 0` server (the
//! test plays the worker over the internal API), the registry's answers
//! over plain HTTP, and a real OCI client, `skopeo` (Debian's; the test is
//! skipped without it unless `KILN_TEST_REQUIRE_SERVICES` is set), that
//! inspects and copies a channel's image; the `plugin.wasm` in its layer
//! is the version's module, and after a promotion the tag serves the next.

mod common;

use common::{Db, Kiln, services_required, small_crate, tiny_plugin_named};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::Command;

const PHASES: &str = r#"["request_headers","response_headers"]"#;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// Uploads `version`, claims its build and reports `module` as its binary:
/// the version's id.
async fn succeed(kiln: &Kiln, app: &str, version: &str, module: &[u8]) -> String {
    let build = id(&kiln.upload_ok(app, version, PHASES, small_crate()).await);
    let r = kiln
        .worker(Method::POST, "/internal/builds/claim")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let claim: Value = r.json().await.unwrap();
    assert_eq!(claim["build"]["id"], build.as_str(), "{claim}");
    let form = reqwest::multipart::Form::new()
        .part(
            "binary",
            reqwest::multipart::Part::bytes(module.to_vec()).file_name("plugin.wasm"),
        )
        .part(
            "logs",
            reqwest::multipart::Part::text("ok\n").file_name("build.log"),
        )
        .text("profile", "{}");
    let r = kiln
        .worker(Method::POST, &format!("/build_success/{build}"))
        .header("x-kiln-lease", claim["lease_id"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    build
}

async fn promote(kiln: &Kiln, app: &str, channel: &str, version: &str) {
    let r = kiln
        .http
        .put(kiln.url(&format!("/application/{app}/channels/{channel}")))
        .bearer_auth(&kiln.admin_token)
        .json(&json!({ "version_id": version }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Asserts a registry error: its status, and its first code.
async fn registry_error(r: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let body: Value = r.json().await.expect("registry errors are JSON");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(body["errors"][0]["message"].is_string(), "{body}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `skopeo`, or `None` (the client half is skipped) when it is missing.
fn skopeo() -> Option<&'static str> {
    let found = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("skopeo");
    }
    assert!(
        !services_required(),
        "skopeo is required (scripts/install-prereqs installs it)"
    );
    eprintln!("skipped the OCI client: skopeo is not installed (apt-get install skopeo)");
    None
}

fn run(skopeo: &str, args: &[&str]) -> std::process::Output {
    Command::new(skopeo)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running skopeo {args:?}: {e}"))
}

fn run_ok(skopeo: &str, args: &[&str]) -> String {
    let out = run(skopeo, args);
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Copies `image` (`host/name:tag` or `host/name@digest`) into `dir` with
/// skopeo; the `plugin.wasm` of its one layer, and the manifest's digest.
fn pull(skopeo: &str, creds: &str, image: &str, dir: &Path) -> (Vec<u8>, String) {
    let _ = std::fs::remove_dir_all(dir);
    run_ok(
        skopeo,
        &[
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            &format!("docker://{image}"),
            &format!("dir:{}", dir.display()),
        ],
    );
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let parsed: Value = serde_json::from_slice(&manifest).unwrap();
    let layers = parsed["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{parsed}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = layers[0]["digest"].as_str().unwrap();
    let layer = std::fs::read(dir.join(layer.strip_prefix("sha256:").unwrap())).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
    let mut module = None;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("plugin.wasm"));
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        assert!(module.replace(bytes).is_none(), "one file");
    }
    (
        module.expect("the layer holds plugin.wasm"),
        format!("sha256:{}", sha256_hex(&manifest)),
    )
}

async fn channels_are_served_as_oci_images(db: Db) {
    let Some(kiln) = Kiln::start(db, &[]).await else {
        return;
    };
    let app = id(&kiln.create_app("istio").await);
    let other = id(&kiln.create_app("other").await);
    let (m1, m2) = (tiny_plugin_named("one"), tiny_plugin_named("two"));
    let v1 = succeed(&kiln, &app, "1.0.0", &m1).await;
    let v2 = succeed(&kiln, &app, "2.0.0", &m2).await;
    promote(&kiln, &app, "production", &v1).await;
    let edge = kiln
        .cli_ok(&["token", "create", "--edge", "--owner", "1", "--app", &app])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let elsewhere = kiln
        .cli_ok(&["token", "create", "--edge", "--owner", "1", "--app", &other])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let get = |path: &str, token: Option<&str>| {
        let request = kiln.http.get(kiln.url(path));
        match token {
            Some(t) => request.basic_auth("edge", Some(t)),
            None => request,
        }
    };
    let manifest_path = format!("/v2/{app}/manifests/production");

    // The base: a challenge without a token, `{}` with one.
    let r = get("/v2/", None).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"kiln\"");
    registry_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = get("/v2/", Some("kilne_nope")).send().await.unwrap();
    registry_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = get("/v2/", Some(&edge)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));

    // A channel is a tag; its manifest names one layer, served by digest.
    let r = get(&manifest_path, Some(&edge)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let manifest = r.bytes().await.unwrap();
    assert_eq!(digest, format!("sha256:{}", sha256_hex(&manifest)));
    let parsed: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = parsed["layers"][0]["digest"].as_str().unwrap().to_owned();
    let r = kiln
        .http
        .head(kiln.url(&manifest_path))
        .basic_auth("edge", Some(&edge))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        r.headers()["content-length"],
        manifest.len().to_string().as_str()
    );
    let r = get(&format!("/v2/app/{app}/blobs/{layer}"), Some(&edge))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        format!("sha256:{}", sha256_hex(&r.bytes().await.unwrap())),
        layer
    );
    // The owner's token reads it too, as Bearer.
    let r = kiln
        .http
        .get(kiln.url(&format!("/v2/{app}/manifests/{digest}")))
        .bearer_auth(&kiln.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), manifest);

    // What does not exist, and what the token may not read, is unknown alike.
    let r = get(&manifest_path, Some(&elsewhere)).send().await.unwrap();
    registry_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    let r = get(&format!("/v2/{other}/manifests/production"), Some(&edge))
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    let r = get(&format!("/v2/{app}/manifests/staging"), Some(&edge))
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let unknown = format!("sha256:{}", "0".repeat(64));
    let r = get(&format!("/v2/{app}/manifests/{unknown}"), Some(&edge))
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = get(&format!("/v2/{app}/blobs/{unknown}"), Some(&edge))
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let r = get(&format!("/v2/{other}/blobs/{layer}"), Some(&elsewhere))
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;

    // Read-only: pushes are refused.
    let r = kiln
        .http
        .put(kiln.url(&manifest_path))
        .basic_auth("edge", Some(&edge))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let r = kiln
        .http
        .post(kiln.url(&format!("/v2/{app}/blobs/uploads/")))
        .bearer_auth(&kiln.admin_token)
        .send()
        .await
        .unwrap();
    registry_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;

    // Tags are the channels, by name, paged with n and last.
    promote(&kiln, &app, "staging", &v2).await;
    let r = get(&format!("/v2/{app}/tags/list"), Some(&edge))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"name": app, "tags": ["production", "staging"]})
    );
    let r = get(&format!("/v2/{app}/tags/list?n=1"), Some(&edge))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["link"]
            .to_str()
            .unwrap()
            .contains("last=production"),
        "{:?}",
        r.headers()
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["tags"],
        json!(["production"])
    );

    // A real OCI client.
    let Some(skopeo) = skopeo() else {
        return;
    };
    let host = kiln.base.strip_prefix("http://").unwrap().to_owned();
    let creds = format!("edge:{edge}");
    let scratch = tempfile::tempdir().unwrap();
    let inspected: Value = serde_json::from_str(&run_ok(
        skopeo,
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("docker://{host}/app/{app}:production"),
        ],
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str(), "{inspected}");
    assert_eq!(inspected["RepoTags"], json!(["production", "staging"]));
    assert_eq!(
        (inspected["Architecture"].as_str(), inspected["Os"].as_str()),
        (Some("wasm"), Some("wasip1"))
    );
    let inspected: Value = serde_json::from_str(&run_ok(
        skopeo,
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("docker://{host}/{app}@{digest}"),
        ],
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str(), "{inspected}");

    let (module, pulled) = pull(
        skopeo,
        &creds,
        &format!("{host}/{app}:production"),
        &scratch.path().join("v1"),
    );
    assert_eq!(pulled, digest);
    assert_eq!(sha256_hex(&module), sha256_hex(&m1));
    let version: Value = kiln
        .get(&format!("/version/{v1}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["binary_sha256"], sha256_hex(&module));

    // A wrong token is refused.
    let out = run(
        skopeo,
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            "edge:kilne_nope",
            &format!("docker://{host}/{app}:production"),
        ],
    );
    assert!(!out.status.success(), "an unknown token was let in");

    // After a promotion the tag serves the next version; the old digest,
    // pinned, still serves the old one.
    promote(&kiln, &app, "production", &v2).await;
    let (module, moved) = pull(
        skopeo,
        &creds,
        &format!("{host}/{app}:production"),
        &scratch.path().join("v2"),
    );
    assert_ne!(moved, digest);
    assert_eq!(sha256_hex(&module), sha256_hex(&m2));
    let (module, pinned) = pull(
        skopeo,
        &creds,
        &format!("{host}/{app}@{digest}"),
        &scratch.path().join("pinned"),
    );
    assert_eq!(pinned, digest);
    assert_eq!(sha256_hex(&module), sha256_hex(&m1));
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

on_both_databases!(channels_are_served_as_oci_images);
