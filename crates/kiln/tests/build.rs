//! Real builds end to end: `kiln serve` with an embedded builder compiles
//! the example filters in the bubblewrap sandbox.

mod common;

use common::{Kiln, repo_root, tar_gz_dir};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// A cold build downloads and compiles dependencies: be generous.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// An example packed as the README does: `tar -czf - -C examples/NAME --exclude target .`
fn example(name: &str) -> Vec<u8> {
    let dir = repo_root().join("examples").join(name);
    let out = std::process::Command::new("tar")
        .arg("-czf")
        .arg("-")
        .arg("-C")
        .arg(&dir)
        .args(["--exclude", "target", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
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
    let kiln = Kiln::start_with(vec![
        "--workers".into(),
        "1".into(),
        "--precompile-target".into(),
        "aarch64-unknown-linux-gnu".into(),
    ]);
    let app = kiln.create_app("examples").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let good = kiln
        .upload_ok(
            &app,
            "1.0.0",
            r#"["request_headers","response_headers"]"#,
            example("add-header"),
        )
        .await;
    let bad = kiln
        .upload_ok(
            &app,
            "1.0.1",
            r#"["request_headers"]"#,
            example("type-error"),
        )
        .await;
    let good_id = good["id"].as_str().unwrap();
    let bad_id = bad["id"].as_str().unwrap();

    let built = kiln.wait_for_build(good_id, BUILD_DEADLINE).await;
    let logs = kiln.logs(good_id).await;
    assert_eq!(built["state"], "succeeded", "{built}\n{logs}");
    assert!(
        built["profile"]["stages_ms"]["compile"].as_u64().is_some(),
        "{built}"
    );
    assert!(logs.contains("sandbox: bubblewrap"), "{logs}");
    assert!(
        logs.contains("wasm-opt -O3:"),
        "the optimized module was kept:\n{logs}"
    );

    let r = kiln
        .get(&format!("/version/{good_id}/binary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let wasm = r.bytes().await.unwrap();
    let names = exports(&wasm);
    for export in [
        "proxy_on_context_create",
        "proxy_on_request_headers",
        "proxy_on_response_headers",
    ] {
        assert!(
            names.iter().any(|n| n == export),
            "{export} missing from {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.starts_with("proxy_abi_version_0_2")),
        "{names:?}"
    );
    let version: Value = kiln
        .get(&format!("/version/{good_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["binary_size"], wasm.len());

    // Precompiled for this host, with a startup profile.
    let startup = &built["profile"]["startup"];
    assert!(
        startup["cwasm_load_us"].as_u64().is_some() && startup["jit_compile_us"].as_u64().is_some(),
        "{built}"
    );
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let r = kiln
        .get(&format!(
            "/version/{good_id}/binary?format=cwasm&target={triple}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let signed = r.bytes().await.unwrap();
    assert!(
        signed.starts_with(b"KILNSIG1"),
        "a .cwasm travels with its signature"
    );
    // The downloaded .cwasm loads and runs in kiln try, once verified
    // against the key the server serves.
    let key = kiln.get("/signing-key").send().await.unwrap();
    assert_eq!(key.status(), StatusCode::OK);
    let key_file = kiln.data_dir().join("server.key.json");
    std::fs::write(&key_file, key.bytes().await.unwrap()).unwrap();
    let try_cwasm = |name: &str, bytes: &[u8], key: Option<&std::path::Path>| {
        let file = kiln.data_dir().join(name);
        std::fs::write(&file, bytes).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.arg("try").arg(&file).args(["--request", "GET /x"]);
        if let Some(key) = key {
            command.arg("--verify-key").arg(key);
        }
        command.output().unwrap()
    };
    let out = try_cwasm("plugin.cwasm", &signed, Some(&key_file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("x-powered-by: kiln"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let refused = |out: std::process::Output| {
        assert!(!out.status.success(), "loaded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let unverified = refused(try_cwasm("plugin.cwasm", &signed, None));
    assert!(unverified.contains("--verify-key"), "{unverified}");
    let mut flipped = signed.to_vec();
    let at = flipped.len() - 1000;
    flipped[at] ^= 0x01;
    let altered = refused(try_cwasm("flipped.cwasm", &flipped, Some(&key_file)));
    assert!(altered.contains("altered"), "{altered}");
    let other_key = kiln.data_dir().join("other.key");
    let other = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    std::fs::write(&other_key, other).unwrap();
    let foreign = refused(try_cwasm("plugin.cwasm", &signed, Some(&other_key)));
    assert!(foreign.contains("another server"), "{foreign}");
    let r = kiln
        .get(&format!(
            "/version/{good_id}/binary?format=cwasm&target=aarch64-unknown-linux-gnu"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "cross-compiled for the configured target"
    );
    let r = kiln
        .get(&format!(
            "/version/{good_id}/binary?format=cwasm&target=riscv64gc-unknown-linux-gnu"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // kiln try on the fresh version shows what the plugin really does.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "try",
            good_id,
            "--request",
            "GET /hello",
            "--json",
            "--server",
            &kiln.base,
            "--token",
            &kiln.admin_token,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tried: Value = serde_json::from_slice(&out.stdout).unwrap();
    let forwarded = tried["forwarded"]["headers"].as_array().unwrap();
    assert!(
        forwarded
            .iter()
            .any(|h| h[0] == "x-kiln-filter" && h[1] == "add-header"),
        "{tried}"
    );
    let response = tried["response"]["headers"].as_array().unwrap();
    assert!(
        response
            .iter()
            .any(|h| h[0] == "x-powered-by" && h[1] == "kiln"),
        "{tried}"
    );
    assert!(
        response
            .iter()
            .any(|h| h[0] == "x-kiln-conf" && h[1] == "hello"),
        "the version's conf: {tried}"
    );

    let failed = kiln.wait_for_build(bad_id, BUILD_DEADLINE).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let logs = kiln.logs(bad_id).await;
    assert!(
        logs.contains("E0308"),
        "rustc's error is in the log:\n{logs}"
    );
    let r = kiln
        .get(&format!("/version/{bad_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn versions_can_be_tried_over_the_api_and_a_loop_is_stopped() {
    let kiln = Kiln::start_with(vec!["--workers".into(), "1".into()]);
    let app = kiln.create_app("try").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let phases = r#"["request_headers"]"#;
    let fields = [
        ("plugin_id", app.as_str()),
        ("version", "1.0.0"),
        ("plugin_language", "rust"),
        ("phases", phases),
        ("options", r#"{"optimize": false, "precompile": false}"#),
    ];
    let r = kiln
        .upload(
            &kiln.admin_token,
            &fields,
            Some(("deny.tar.gz", example("deny-path"))),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let deny = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fixture = tar_gz_dir(&repo_root().join("tests/fixtures/filters/misbehaving"));
    let looping = kiln.upload_ok(&app, "2.0.0", phases, fixture).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let heavy = tar_gz_dir(&repo_root().join("tests/fixtures/filters/heavy-init"));
    let heavy = kiln.upload_ok(&app, "3.0.0", phases, heavy).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [&deny, &looping, &heavy] {
        let build = kiln.wait_for_build(id, BUILD_DEADLINE).await;
        assert_eq!(build["state"], "succeeded", "{build}");
    }

    // Its post-build steps were turned off for this version.
    let logs = kiln.logs(&deny).await;
    assert!(
        logs.contains("wasm-opt skipped")
            && logs.contains("precompilation and startup profile skipped"),
        "{logs}"
    );
    let r = kiln
        .get(&format!(
            "/version/{deny}/binary?format=cwasm&target={}-unknown-linux-gnu",
            std::env::consts::ARCH
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = kiln
        .post(&format!("/version/{deny}/try"))
        .json(&serde_json::json!({"path": "/admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tried: Value = r.json().await.unwrap();
    assert_eq!(tried["local_response"]["status"], 403, "{tried}");
    assert_eq!(tried["local_response"]["body"], r#"{"error":"forbidden"}"#);
    assert!(tried["forwarded"].is_null());
    let r = kiln
        .post(&format!("/version/{deny}/try"))
        .json(&serde_json::json!({"path": "/public"}))
        .send()
        .await
        .unwrap();
    let tried: Value = r.json().await.unwrap();
    assert_eq!(tried["response"]["status"], 200, "{tried}");
    // A scenario runs its requests through one instance, in the sandbox;
    // a local reply goes through the response callbacks.
    let r = kiln
        .post(&format!("/version/{deny}/try"))
        .json(&serde_json::json!({"requests": [{"path": "/admin"}, {"path": "/public", "after_ms": 10}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tried: Value = r.json().await.unwrap();
    let exchanges = tried["exchanges"]
        .as_array()
        .expect("one exchange per request");
    assert_eq!(exchanges[0]["response"]["status"], 403, "{tried}");
    assert!(
        exchanges[0]["response"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-deny-path"),
        "{tried}"
    );
    assert_eq!(exchanges[1]["response"]["status"], 200, "{tried}");
    let r = kiln
        .post(&format!("/version/{deny}/try"))
        .json(&serde_json::json!({"path": "/x", "requests": [{"path": "/admin"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "one request or a scenario"
    );
    // A request no proxy would hand a filter is refused, not run.
    let r = kiln
        .post(&format!("/version/{deny}/try"))
        .json(&serde_json::json!({"path": "/a b", "headers": [["x-a", "1\r\nx-b: 2"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"], "invalid_input", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("\"/a b\""),
        "{error}"
    );

    // A module with wizer.initialize is pre-initialized at build time.
    let logs = kiln.logs(&heavy).await;
    assert!(
        logs.contains("pre-initialized with wizer.initialize"),
        "{logs}"
    );
    let r = kiln
        .post(&format!("/version/{heavy}/try"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let tried: Value = r.json().await.unwrap();
    assert!(
        tried["forwarded"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-table-checksum"),
        "{tried}"
    );

    let started = std::time::Instant::now();
    let r = kiln
        .post(&format!("/version/{looping}/try"))
        .json(&serde_json::json!({"path": "/loop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"], "plugin_error", "{error}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let r = kiln.http.get(kiln.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the server stays up");
    wasm_children_answer_from_their_job_directory(&kiln, &deny, &looping).await;
    let other = kiln.token_for_owner(2);
    let r = kiln
        .http
        .post(kiln.url(&format!("/version/{deny}/try")))
        .bearer_auth(&other)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// kiln hands each run of a customer's module to `kiln wasm-child` in the
/// sandbox: the child reads its job and modules from one directory and
/// writes its outcome there.
async fn wasm_children_answer_from_their_job_directory(kiln: &Kiln, deny: &str, looping: &str) {
    let child = |dir: &std::path::Path, job: Value| {
        std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("wasm-child")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
        let outcome = std::fs::read(dir.join("outcome.json")).unwrap();
        serde_json::from_slice::<Value>(&outcome).unwrap()
    };
    let binary = |id: &str| {
        let request = kiln.get(&format!("/version/{id}/binary"));
        async move { request.send().await.unwrap().bytes().await.unwrap() }
    };
    let (deny, looping) = (binary(deny).await, binary(looping).await);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plugin.wasm"), &deny).unwrap();
    std::fs::write(dir.path().join("candidate.wasm"), &deny).unwrap();
    let smoke = serde_json::json!({"kind": "smoke", "conf": ""});
    let outcome = child(dir.path(), smoke.clone());
    assert_eq!(
        outcome["done"], true,
        "a module answers like itself: {outcome}"
    );
    let outcome = child(
        dir.path(),
        serde_json::json!({"kind": "profile", "conf": "", "runs": 2}),
    );
    assert_eq!(outcome["done"]["runs"], 2, "{outcome}");
    let init = serde_json::json!({
        "kind": "preinit", "conf": "",
        "limits": {"fuel": 100_000_000, "wall": {"secs": 1, "nanos": 0}, "memory_bytes": 64 << 20}
    });
    let outcome = child(dir.path(), init);
    assert!(
        outcome["plugin_failed"]
            .as_str()
            .unwrap_or_default()
            .contains("wizer"),
        "no init function to run: {outcome}"
    );

    std::fs::write(dir.path().join("candidate.wasm"), b"\0asm garbage").unwrap();
    let outcome = child(dir.path(), smoke);
    assert!(
        outcome["host_failed"]
            .as_str()
            .unwrap_or_default()
            .contains("compile"),
        "a module that does not compile is not compared: {outcome}"
    );
    // A trial's own job reads the .cwasm the server compiled; it never
    // compiles one itself.
    std::fs::write(dir.path().join("plugin.wasm"), &looping).unwrap();
    let trial = serde_json::json!({
        "kind": "trial",
        "request": {"path": "/loop"},
        "limits": {"fuel": 100_000_000, "wall": {"secs": 1, "nanos": 0}, "memory_bytes": 64 << 20}
    });
    let outcome = child(dir.path(), trial);
    assert!(
        outcome["host_failed"]
            .as_str()
            .unwrap_or_default()
            .contains("plugin.cwasm"),
        "{outcome}"
    );
}

/// On SIGTERM, builders stop claiming, give running builds a grace period,
/// then report them crashed, so they are queued again for another worker.
#[tokio::test]
async fn a_stopping_worker_hands_its_build_back() {
    let mut kiln = Kiln::start_with(vec![
        "--workers".into(),
        "1".into(),
        "--grace-seconds".into(),
        "2".into(),
    ]);
    let app = kiln.create_app("stop").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sleeper = tar_gz_dir(&repo_root().join("tests/hostile/sleep-forever"));
    let id = kiln
        .upload_ok(&app, "1.0.0", r#"["request_headers"]"#, sleeper)
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    kiln.wait_for_state(&id, &["running"], BUILD_DEADLINE).await;
    let started = std::time::Instant::now();
    kiln.stop();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped after the grace period: {:?}",
        started.elapsed()
    );
    // Back up with no builders: the build waits in the queue for a worker.
    let args = vec!["--workers".to_owned(), "0".to_owned()];
    let mut restarted = kiln.restart_with(args).await;
    let build = restarted.build(&id).await;
    assert_eq!(build["state"], "queued", "{build}");
    assert_eq!(build["attempt"], 1);
    assert!(
        build["error"].as_str().unwrap().contains("shut down"),
        "{build}"
    );
    restarted.stop();
}

/// A remote worker: an API-only server and `kiln worker` with nothing but
/// the server's URL and the worker token.
#[tokio::test]
async fn a_remote_worker_builds_over_http() {
    let kiln = Kiln::start_with(vec!["--workers".into(), "0".into()]);
    let app = kiln.create_app("remote").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = kiln
        .upload_ok(
            &app,
            "1.0.0",
            r#"["request_headers"]"#,
            example("deny-path"),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let workdir = tempfile::tempdir().unwrap();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["worker", "--server", &kiln.base, "--workers", "1"])
        .env("KILN_WORKER_TOKEN", &kiln.worker_token)
        .env("KILN_LOG", "warn")
        .env_remove("KILN_DATABASE_URL")
        .current_dir(workdir.path())
        .spawn()
        .unwrap();
    let build = kiln.wait_for_build(&id, BUILD_DEADLINE).await;
    // SAFETY: kill(2) on the worker this test started.
    unsafe { libc_kill(worker.id() as i32, 15) };
    let status = worker.wait().unwrap();
    assert_eq!(build["state"], "succeeded", "{build}");
    assert!(
        status.success(),
        "the worker stops cleanly on SIGTERM: {status}"
    );
    let r = kiln
        .get(&format!("/version/{id}/binary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
