//! The client commands and the live log, against the real binary: the test
//! plays the worker over the internal API (`kiln serve --workers 0`).

mod common;

use common::{Db, Kiln, small_crate};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a client command against `kiln` as its admin, with a config
/// directory of its own.
fn client(kiln: &Kiln, config: &Path, args: &[&str]) -> Output {
    client_command(kiln, config, args).output().unwrap()
}

fn client_command(kiln: &Kiln, config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .args(args)
        .env("KILN_SERVER", &kiln.base)
        .env("KILN_TOKEN", &kiln.admin_token)
        .env("XDG_CONFIG_HOME", config)
        .env("KILN_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("--json prints JSON")
}

async fn claim(kiln: &Kiln) -> Value {
    let r = kiln
        .worker(Method::POST, "/internal/builds/claim")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Sends a live log chunk as the worker; returns the server's `received`.
async fn chunk(kiln: &Kiln, claim: &Value, offset: usize, text: &str) -> u64 {
    let id = claim["build"]["id"].as_str().unwrap();
    let r = kiln
        .worker(
            Method::POST,
            &format!("/internal/builds/{id}/log?offset={offset}"),
        )
        .header("x-kiln-lease", claim["lease_id"].as_str().unwrap())
        .body(text.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["received"]
        .as_u64()
        .unwrap()
}

async fn report_fail(kiln: &Kiln, claim: &Value, logs: &str) {
    let id = claim["build"]["id"].as_str().unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "logs",
            reqwest::multipart::Part::text(logs.to_owned()).file_name("build.log"),
        )
        .text("error", "error[E0308]: mismatched types");
    let r = kiln
        .worker(Method::POST, &format!("/build_fail/{id}"))
        .header("x-kiln-lease", claim["lease_id"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Reads SSE from `response` until `end` (or `max` events); returns the
/// (event, id, data) of each.
async fn events(mut response: reqwest::Response, max: usize) -> Vec<(String, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < max {
        let Some(bytes) = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("an event within 20 s")
            .unwrap()
        else {
            break;
        };
        buf.push_str(std::str::from_utf8(&bytes).unwrap());
        while let Some(at) = buf.find("\n\n") {
            let block: String = buf.drain(..at + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.into();
                }
            }
            if !event.is_empty() {
                let done = event == "end";
                out.push((event, id, serde_json::from_str(&data).unwrap()));
                if done {
                    return out;
                }
            }
        }
    }
    out
}

fn follow(kiln: &Kiln, id: &str, last_event_id: Option<&str>) -> reqwest::RequestBuilder {
    let mut r = kiln.get(&format!("/version_build/{id}/logs?follow=true"));
    if let Some(last) = last_event_id {
        r = r.header("last-event-id", last);
    }
    r
}

#[tokio::test]
async fn a_live_log_streams_resumes_and_ends_with_the_state() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let app = kiln.create_app("live").await;
    let build = kiln
        .upload_ok(
            app["id"].as_str().unwrap(),
            "1.0.0",
            r#"["request_headers"]"#,
            small_crate(),
        )
        .await;
    let id = build["id"].as_str().unwrap().to_owned();
    let claimed = claim(&kiln).await;

    // A reader that comes before any line.
    let early = follow(&kiln, &id, None).send().await.unwrap();
    assert_eq!(early.status(), StatusCode::OK);
    assert_eq!(early.headers()["content-type"], "text/event-stream");

    let first = "[kiln] compiling 🦀\r\n";
    assert_eq!(chunk(&kiln, &claimed, 0, first).await, first.len() as u64);
    // A retried chunk is not appended twice; an overlapping one adds its tail.
    assert_eq!(chunk(&kiln, &claimed, 0, first).await, first.len() as u64);
    let second = "error[E0308]: mismatched types\n";
    let both = format!("{first}{second}");
    assert_eq!(chunk(&kiln, &claimed, 0, &both).await, both.len() as u64);
    // A gap is not appended: the worker is told where to resume.
    assert_eq!(chunk(&kiln, &claimed, 999, "lost").await, both.len() as u64);

    // The log so far, without following.
    assert_eq!(kiln.logs(&id).await, both);

    // A late reader gets it all at once; one that reconnects, only the rest.
    let late = events(follow(&kiln, &id, None).send().await.unwrap(), 1).await;
    assert_eq!(late[0].0, "log");
    assert_eq!(late[0].2["text"], both.as_str());
    assert_eq!(late[0].1, both.len().to_string());
    let resumed = follow(&kiln, &id, Some(&first.len().to_string()))
        .send()
        .await
        .unwrap();
    let resumed = events(resumed, 1).await;
    assert_eq!(resumed[0].2["text"], second);

    // The stored log is the source once the build ends: the reader gets
    // what it has not seen of it, then the end with the state.
    let stored = format!("{both}[kiln] failed\n");
    report_fail(&kiln, &claimed, &stored).await;
    let seen = events(early, 10).await;
    let text: String = seen
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| e.2["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, stored);
    let end = seen.last().unwrap();
    assert_eq!(end.0, "end");
    assert_eq!(end.2["state"], "failed");
    assert_eq!(end.2["error"], "error[E0308]: mismatched types");

    // After the end a follower gets the stored log and the end at once.
    let after = events(follow(&kiln, &id, None).send().await.unwrap(), 10).await;
    assert_eq!(after[0].2["text"], stored.as_str());
    assert_eq!(after.last().unwrap().2["state"], "failed");
    // A chunk after the end is refused: the lease is gone.
    let r = kiln
        .worker(Method::POST, &format!("/internal/builds/{id}/log?offset=0"))
        .header("x-kiln-lease", claimed["lease_id"].as_str().unwrap())
        .body("late")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Another owner sees nothing.
    let other = kiln.token_for_owner(2);
    let r = kiln
        .http
        .get(kiln.url(&format!("/version_build/{id}/logs?follow=true")))
        .bearer_auth(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn kiln_logs_follow_prints_the_log_and_exits_with_the_state() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let app = kiln.create_app("follow").await;
    let build = kiln
        .upload_ok(
            app["id"].as_str().unwrap(),
            "1.0.0",
            r#"["request_headers"]"#,
            small_crate(),
        )
        .await;
    let id = build["id"].as_str().unwrap().to_owned();
    let claimed = claim(&kiln).await;
    chunk(&kiln, &claimed, 0, "line one\n").await;

    let started = Instant::now();
    let child = client_command(&kiln, config.path(), &["logs", &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    chunk(&kiln, &claimed, 9, "line two\n").await;
    report_fail(&kiln, &claimed, "line one\nline two\nthe end\n").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line one\nline two\nthe end\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed: error[E0308]: mismatched types"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_client_manages_apps_deploys_cancels_and_prints_json() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = config.path();

    // init, and the templates listed.
    let templates = ok(&client(&kiln, cfg, &["init", "--list"]));
    assert!(
        templates.contains("headers") && templates.contains("deny"),
        "{templates}"
    );
    let project = work.path().join("demo");
    ok(&client(&kiln, cfg, &["init", project.to_str().unwrap()]));
    assert!(project.join("Cargo.toml").exists() && project.join("src/lib.rs").exists());
    std::fs::create_dir_all(project.join("target/release")).unwrap();
    std::fs::write(project.join("target/release/big.bin"), vec![0u8; 1 << 20]).unwrap();

    // deploy --no-wait creates the application and queues the build.
    let queued = json(&client(
        &kiln,
        cfg,
        &[
            "deploy",
            project.to_str().unwrap(),
            "--app",
            "demo",
            "--no-wait",
            "--json",
        ],
    ));
    assert_eq!(queued["state"], "queued");
    assert_eq!(queued["version"], "0.1.0");
    assert_eq!(
        queued["phases"],
        serde_json::json!(["request_headers", "response_headers"])
    );
    let id = queued["id"].as_str().unwrap().to_owned();
    // The archive left out target/ (1 MiB of zeros would not pack this small).
    let source = kiln
        .get(&format!("/version/{id}/source"))
        .send()
        .await
        .unwrap();
    assert!(source.bytes().await.unwrap().len() < 16 * 1024);

    let apps = json(&client(&kiln, cfg, &["app", "list", "--json"]));
    assert_eq!(apps[0]["name"], "demo");
    let table = ok(&client(&kiln, cfg, &["app", "list"]));
    assert!(table.starts_with("ID") && table.contains("demo"), "{table}");
    let renamed = json(&client(
        &kiln,
        cfg,
        &["app", "rename", "demo", "demo2", "--json"],
    ));
    assert_eq!(renamed["name"], "demo2");

    let builds = json(&client(&kiln, cfg, &["builds", "--app", "demo2", "--json"]));
    assert_eq!(builds[0]["id"], id.as_str());
    let cancelled = json(&client(&kiln, cfg, &["cancel", &id, "--json"]));
    assert_eq!(cancelled["state"], "cancelled");
    let shown = ok(&client(&kiln, cfg, &["build", "show", &id]));
    assert!(shown.contains("cancelled"), "{shown}");

    // A refusal is the server's sentence on one line, and a failure.
    let out = client(&kiln, cfg, &["cancel", &id]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("can no longer be cancelled"), "{stderr}");
    let out = client(&kiln, cfg, &["app", "list", "--token", "nope"]);
    assert!(!out.status.success());

    // Completions.
    let bash = ok(&client(&kiln, cfg, &["completions", "bash"]));
    assert!(bash.contains("deploy"));

    // login stores the server and token in a private file; later commands use it.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "login",
            "--server",
            &kiln.base,
            "--token",
            &kiln.admin_token,
        ])
        .env("XDG_CONFIG_HOME", cfg)
        .env_remove("KILN_SERVER")
        .env_remove("KILN_TOKEN")
        .output()
        .unwrap();
    ok(&out);
    let file = cfg.join("kiln/config.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["app", "show", "demo2", "--json"])
        .env("XDG_CONFIG_HOME", cfg)
        .env_remove("KILN_SERVER")
        .env_remove("KILN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(json(&out)["application"]["name"], "demo2");
}

/// The smallest module the server takes for a plugin.
fn wasm() -> Vec<u8> {
    common::tiny_plugin()
}

#[tokio::test]
async fn download_checks_the_sha256_and_versions_list_it() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let app = kiln.create_app("dl").await;
    let build = kiln
        .upload_ok(
            app["id"].as_str().unwrap(),
            "1.2.3",
            r#"["request_headers"]"#,
            small_crate(),
        )
        .await;
    let id = build["id"].as_str().unwrap().to_owned();
    let claimed = claim(&kiln).await;
    let binary = wasm();
    let form = reqwest::multipart::Form::new()
        .part(
            "binary",
            reqwest::multipart::Part::bytes(binary.clone()).file_name("plugin.wasm"),
        )
        .part(
            "logs",
            reqwest::multipart::Part::text("ok\n").file_name("build.log"),
        );
    let r = kiln
        .worker(Method::POST, &format!("/build_success/{id}"))
        .header("x-kiln-lease", claimed["lease_id"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let file = cfg.join("plugin.wasm");
    let out = json(&client(
        &kiln,
        cfg,
        &["download", &id, "-o", file.to_str().unwrap(), "--json"],
    ));
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&binary));
    assert_eq!(out["sha256"], sha.as_str());
    assert_eq!(std::fs::read(&file).unwrap(), binary);

    let versions = ok(&client(&kiln, cfg, &["versions", "--app", "dl"]));
    assert!(
        versions.contains("1.2.3") && versions.contains(&sha),
        "{versions}"
    );
    let shown = json(&client(&kiln, cfg, &["version", "show", &id, "--json"]));
    assert_eq!(shown["binary_sha256"], sha.as_str());
    let edited = json(&client(
        &kiln,
        cfg,
        &["version", "edit", &id, "--notes", "tried", "--json"],
    ));
    assert_eq!(edited["notes"], "tried");
    let missing = client(&kiln, cfg, &["download", &uuid::Uuid::new_v4().to_string()]);
    assert!(!missing.status.success());
    ok(&client(&kiln, cfg, &["version", "delete", &id, "--yes"]));
    assert_eq!(
        json(&client(&kiln, cfg, &["versions", "--app", "dl", "--json"])),
        serde_json::json!([])
    );
}

/// Claims the next build, waiting up to 20 s for one to be queued.
async fn claim_when_queued(kiln: &Kiln) -> Value {
    let r = kiln
        .worker(Method::POST, "/internal/builds/claim?wait_seconds=20")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a build was queued within 20 s");
    r.json().await.unwrap()
}

/// Reports the claimed build a success with the smallest plugin.
async fn report_success(kiln: &Kiln, claim: &Value) {
    let id = claim["build"]["id"].as_str().unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "binary",
            reqwest::multipart::Part::bytes(wasm()).file_name("plugin.wasm"),
        )
        .part(
            "logs",
            reqwest::multipart::Part::text("built\n").file_name("build.log"),
        );
    let r = kiln
        .worker(Method::POST, &format!("/build_success/{id}"))
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
}

#[tokio::test]
async fn channels_are_promoted_rolled_back_listed_and_deploy_promotes() {
    let kiln = Kiln::start(Db::Sqlite, &[]).await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path();
    let app = kiln.create_app("chan").await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for version in ["1.0.0", "1.1.0"] {
        let build = kiln
            .upload_ok(&app_id, version, r#"["request_headers"]"#, small_crate())
            .await;
        let claimed = claim(&kiln).await;
        assert_eq!(claimed["build"]["id"], build["id"]);
        report_success(&kiln, &claimed).await;
        ids.push(build["id"].as_str().unwrap().to_owned());
    }

    // By id; then by number with --app, as a table.
    let first = json(&client(
        &kiln,
        cfg,
        &["promote", &ids[0], "--channel", "production", "--json"],
    ));
    assert_eq!(first["version"]["version"], "1.0.0");
    assert_eq!(first["revision"], 1);
    let shown = ok(&client(
        &kiln,
        cfg,
        &[
            "promote",
            "1.1.0",
            "--app",
            "chan",
            "--channel",
            "production",
        ],
    ));
    assert!(
        shown.contains("1.1.0") && shown.contains(&ids[1]) && shown.contains("revision  2"),
        "{shown}"
    );
    // A number without --app, and a version the application does not have, are refused.
    let out = client(&kiln, cfg, &["promote", "1.1.0", "--channel", "production"]);
    assert!(!out.status.success());
    let out = client(
        &kiln,
        cfg,
        &[
            "promote",
            "9.9.9",
            "--app",
            "chan",
            "--channel",
            "production",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no succeeded version 9.9.9"));

    let table = ok(&client(&kiln, cfg, &["channels", "--app", "chan"]));
    assert!(table.starts_with("CHANNEL"), "{table}");
    assert!(
        table.contains("production")
            && table.contains("1.1.0")
            && table.contains("promote by owner 1"),
        "{table}"
    );

    // A rollback returns to 1.0.0; the history says so.
    let back = json(&client(
        &kiln,
        cfg,
        &[
            "rollback",
            "--app",
            "chan",
            "--channel",
            "production",
            "--json",
        ],
    ));
    assert_eq!(back["version"]["id"], ids[0].as_str());
    assert_eq!(back["history"][0]["action"], "rollback");
    let listed = json(&client(
        &kiln,
        cfg,
        &["channels", "--app", "chan", "--json"],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["version"]["version"], "1.0.0");
    // A channel that does not exist: the server's sentence, one line.
    let out = client(
        &kiln,
        cfg,
        &["rollback", "--app", "chan", "--channel", "staging"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no channel staging"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // deploy --promote follows the build (this test is its worker) and
    // promotes once it succeeded.
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("demo");
    ok(&client(&kiln, cfg, &["init", project.to_str().unwrap()]));
    let out = client(
        &kiln,
        cfg,
        &[
            "deploy",
            project.to_str().unwrap(),
            "--app",
            "chan",
            "--no-wait",
            "--promote",
            "staging",
        ],
    );
    assert!(!out.status.success(), "--promote needs the build's end");
    let child = client_command(
        &kiln,
        cfg,
        &[
            "deploy",
            project.to_str().unwrap(),
            "--app",
            "chan",
            "--version",
            "2.0.0",
            "--promote",
            "staging",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let claimed = claim_when_queued(&kiln).await;
    assert_eq!(claimed["build"]["version"], "2.0.0");
    report_success(&kiln, &claimed).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("channel staging now serves 2.0.0 (revision 1)"),
        "{stderr}"
    );
    let staging: Value = kiln
        .get(&format!("/application/{app_id}/channels/staging"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(staging["version"]["id"], claimed["build"]["id"]);
}
