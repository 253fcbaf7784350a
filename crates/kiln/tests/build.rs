//! Real builds end to end: `kiln serve` with an embedded builder compiles
//! the example filters in the bubblewrap sandbox.

mod common;

use common::{repo_root, tar_gz_dir, Kiln};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// A cold build downloads and compiles dependencies: be generous.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

fn example(name: &str) -> Vec<u8> {
    tar_gz_dir(&repo_root().join("examples").join(name))
}

fn exports(wasm: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::ExportSection(reader) = payload.unwrap() {
            for export in reader {
                names.push(export.unwrap().name.to_owned());
            }
        }
    }
    names
}

#[tokio::test]
async fn an_example_filter_builds_and_a_type_error_fails() {
    let kiln = Kiln::start_with(vec!["--workers".into(), "1".into()]);
    let app = kiln.create_app("examples").await["id"].as_str().unwrap().to_owned();

    let good = kiln.upload_ok(&app, "1.0.0", r#"["request_headers","response_headers"]"#, example("add-header")).await;
    let bad = kiln.upload_ok(&app, "1.0.1", r#"["request_headers"]"#, example("type-error")).await;
    let good_id = good["id"].as_str().unwrap();
    let bad_id = bad["id"].as_str().unwrap();

    let built = kiln.wait_for_build(good_id, BUILD_DEADLINE).await;
    let logs = kiln.get(&format!("/version_build/{good_id}/logs")).send().await.unwrap().text().await.unwrap();
    assert_eq!(built["state"], "succeeded", "{built}\n{logs}");
    assert!(built["profile"]["stages_ms"]["compile"].as_u64().is_some(), "{built}");
    assert!(logs.contains("sandbox: bubblewrap"), "{logs}");

    let r = kiln.get(&format!("/version/{good_id}/binary")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let wasm = r.bytes().await.unwrap();
    let names = exports(&wasm);
    for export in ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers"] {
        assert!(names.iter().any(|n| n == export), "{export} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("proxy_abi_version_0_2")), "{names:?}");
    let version: Value = kiln.get(&format!("/version/{good_id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(version["binary_size"], wasm.len());

    let failed = kiln.wait_for_build(bad_id, BUILD_DEADLINE).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let logs = kiln.get(&format!("/version_build/{bad_id}/logs")).send().await.unwrap().text().await.unwrap();
    assert!(logs.contains("E0308"), "rustc's error is in the log:\n{logs}");
    let r = kiln.get(&format!("/version/{bad_id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
