//! The web page at `/`: how it is served, and a browser test in headless
//! Chromium that uses it as a person would, against a real build.

mod common;

use common::{Db, Kiln, repo_root, services_required, tar_gz_dir};
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_api_paths_stay_json() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let page = kiln.http.get(kiln.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/app.js">"#));

    for (path, kind) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let r = kiln.http.get(kiln.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
    }

    // Unknown paths, under the page's folder too, still get the API's JSON 404.
    for path in ["/no-such-endpoint", "/ui/nothing.js", "/application/x/y/z"] {
        let r = kiln.get(path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
    }
    // The page takes no token; the API still does.
    let r = kiln
        .http
        .get(kiln.url("/application"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// node, Chromium and the test's playwright-core, or why the test cannot run.
fn browser_tools(web_test: &Path) -> Result<(), String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not installed".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("{CHROMIUM} is not installed (Debian's chromium)"));
    }
    if !web_test.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "playwright-core is not installed in {} (scripts/install-prereqs runs npm ci there)",
            web_test.display()
        ));
    }
    Ok(())
}

/// Where the screenshots go: beside the build's other test artifacts.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-screenshots")
}

#[tokio::test]
async fn a_person_deploys_from_the_page_in_headless_chromium() {
    let root = repo_root();
    let web_test = root.join("web/test");
    if let Err(why) = browser_tools(&web_test) {
        assert!(!services_required(), "the browser test cannot run: {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let kiln = Kiln::start_with(vec!["--workers".into(), "1".into()]);
    kiln.wait_healthy().await;
    let token = kiln.token_for_owner(7);

    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("add-header.tar.gz");
    std::fs::write(&archive, tar_gz_dir(&root.join("examples/add-header"))).unwrap();
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);

    let started = Instant::now();
    let base = kiln.base.clone();
    let script = web_test.join("page.test.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .arg(&base)
            .arg(&token)
            .arg(&archive)
            .arg(&shots)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    eprintln!(
        "browser test took {:.1} s; screenshots in {}",
        took.as_secs_f64(),
        screenshot_dir().display()
    );
    assert!(out.status.success(), "the browser test failed");
    assert!(took < Duration::from_secs(600));
}
