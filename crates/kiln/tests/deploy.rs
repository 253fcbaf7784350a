//! `kiln init` then `kiln deploy` as a new user runs them, against a
//! server that builds for real in the bubblewrap sandbox (`--workers 1`).

mod common;

use common::Kiln;
use std::process::{Command, Output, Stdio};

fn kiln_client(kiln: &Kiln, config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_SERVER", &kiln.base)
        .env("KILN_TOKEN", &kiln.admin_token)
        .env("XDG_CONFIG_HOME", config)
        .env("KILN_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn init_then_deploy_builds_and_a_broken_filter_fails_with_rustcs_error() {
    let kiln = Kiln::start_with(vec!["--workers".into(), "1".into()]);
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config");
    let project = work.path().join("demo");
    let dir = project.to_str().unwrap();

    let out = kiln_client(&kiln, &cfg, &["init", dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = kiln_client(&kiln, &cfg, &["deploy", dir, "--app", "demo"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The live log reached the terminal: kiln's lines and cargo's.
    assert!(stderr.contains("sandbox: bubblewrap"), "{stderr}");
    assert!(stderr.contains("Compiling demo v0.1.0"), "{stderr}");
    let sha = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha256"))
        .expect("the sha256 is printed")
        .trim()
        .to_owned();
    assert_eq!(sha.len(), 64, "{stdout}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .unwrap()
        .trim()
        .to_owned();
    let version: serde_json::Value = kiln
        .get(&format!("/version/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["binary_sha256"], sha.as_str());

    // A type error: the deploy fails, and rustc's message is on the terminal.
    let lib = project.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        format!("{code}\nfn broken() -> u32 {{ \"not a number\" }}\n"),
    )
    .unwrap();
    let out = kiln_client(
        &kiln,
        &cfg,
        &["deploy", dir, "--app", "demo", "--version", "0.1.1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("error[E0308]: mismatched types"),
        "{stderr}"
    );
    assert!(stderr.contains("failed"), "{stderr}");
}
