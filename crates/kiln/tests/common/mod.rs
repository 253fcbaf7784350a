//! The end-to-end harness: starts the real `kiln` binary on a temporary
//! data dir and a free port, and talks to it over HTTP.
#![allow(dead_code)]

use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which metadata backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct Kiln {
    child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    pub worker_token: String,
    pub http: reqwest::Client,
    args: Vec<String>,
    /// Environment variables of the server process besides kiln's log level.
    env: Vec<(String, String)>,
    /// The `--listen` address: port 0 at first, the bound address once
    /// [`Kiln::respawn`] brings a killed server back where clients expect it.
    listen: String,
}

/// Whether services started by `scripts/test` are required.
pub fn services_required() -> bool {
    std::env::var("KILN_TEST_REQUIRE_SERVICES").is_ok()
}

/// A PostgreSQL URL whose tables live in a fresh schema, or `None` (the
/// test is skipped) when no server is configured.
pub async fn postgres_url() -> Option<String> {
    let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") else {
        assert!(!services_required(), "KILN_TEST_DATABASE_URL is required");
        eprintln!("skipped: KILN_TEST_DATABASE_URL is not set (scripts/test sets it)");
        return None;
    };
    Some(postgres_schema_url(&url).await)
}

/// A URL of the PostgreSQL server at `url` whose tables live in a fresh,
/// migrated schema.
pub async fn postgres_schema_url(url: &str) -> String {
    let schema = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    // Creates and migrates the schema; kiln then connects into it.
    let store = kiln_store::MetaStore::connect_postgres_schema(url, &schema)
        .await
        .unwrap();
    store.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

impl Kiln {
    /// Starts `kiln serve --workers 0` (tests play the worker) on `db`.
    pub async fn start(db: Db, extra: &[&str]) -> Option<Kiln> {
        let mut args: Vec<String> = vec!["--workers".into(), "0".into()];
        if db == Db::Postgres {
            args.push("--database-url".into());
            args.push(postgres_url().await?);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Some(Self::start_with(args))
    }

    pub fn start_with(args: Vec<String>) -> Kiln {
        Self::start_with_env(args, Vec::new())
    }

    /// As [`Kiln::start_with`], with these environment variables.
    pub fn start_with_env(args: Vec<String>, env: Vec<(String, String)>) -> Kiln {
        let dir = tempfile::tempdir().unwrap();
        let mut kiln = Kiln {
            child: None,
            base: String::new(),
            dir,
            admin_token: String::new(),
            worker_token: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            args,
            env,
            listen: "127.0.0.1:0".into(),
        };
        kiln.spawn();
        // A server joining a database that has owners creates no admin
        // token, and one given --worker-token writes no worker.token.
        let admin = kiln.dir.path().join("admin.token");
        if admin.exists() {
            kiln.admin_token = read_token(&admin);
        }
        let worker = kiln.dir.path().join("worker.token");
        if worker.exists() {
            kiln.worker_token = read_token(&worker);
        }
        kiln
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the running `kiln serve`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("kiln is running").id()
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env(
                "KILN_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("kiln starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("kiln prints its address").unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        self.base = format!("http://{addr}");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// Stops kiln with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc_kill(child.id() as i32, 15) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "kiln exited with {status} on SIGTERM");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("kiln did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills kiln with SIGKILL (no draining, no cleanup) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts a killed or stopped kiln again on the same address, data dir
    /// and flags, and waits until it answers.
    pub async fn respawn(&mut self) {
        assert!(self.child.is_none(), "kiln is still running");
        self.listen = self.base.trim_start_matches("http://").to_owned();
        self.spawn();
        self.wait_healthy().await;
    }

    /// Stops and starts kiln again on the same data dir and database.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_healthy().await;
    }

    /// Starts a stopped kiln again on the same data dir with other flags.
    pub async fn restart_with(mut self, args: Vec<String>) -> Kiln {
        self.stop();
        self.args = args;
        self.spawn();
        self.wait_healthy().await;
        self
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("kiln did not become healthy");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.admin_token)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.admin_token)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .patch(self.url(path))
            .bearer_auth(&self.admin_token)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(self.url(path))
            .bearer_auth(&self.admin_token)
    }

    /// A request as a worker.
    pub fn worker(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.worker_token)
    }

    /// A request as the worker holding `token`.
    pub fn worker_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// Runs a `kiln` command on this server's data dir and database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.args(args).arg("--data-dir").arg(self.dir.path());
        if let Some(i) = self.args.iter().position(|a| a == "--database-url") {
            command.args(["--database-url", &self.args[i + 1]]);
        }
        command
            .env("KILN_LOG", "warn")
            .env_remove("KILN_WORKER_TOKEN")
            .output()
            .unwrap()
    }

    /// Runs a `kiln` command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "kiln {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates another owner with `kiln token create` and returns its token.
    pub fn token_for_owner(&self, owner: i64) -> String {
        last_line(&self.cli_ok(&["token", "create", "--owner", &owner.to_string()]))
    }

    /// Creates a worker with `kiln token create --worker` and returns its token.
    pub fn token_for_worker(&self, name: &str) -> String {
        last_line(&self.cli_ok(&["token", "create", "--worker", name]))
    }

    pub async fn create_app(&self, name: &str) -> Value {
        let r = self
            .post("/application")
            .json(&serde_json::json!({"name": name, "notes": "n"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    /// Uploads a version; returns the raw response.
    pub async fn upload(
        &self,
        token: &str,
        fields: &[(&str, &str)],
        archive: Option<(&str, Vec<u8>)>,
    ) -> Response {
        let mut form = Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        if let Some((name, bytes)) = archive {
            form = form.part("source_code", Part::bytes(bytes).file_name(name.to_owned()));
        }
        self.http
            .post(self.url("/version"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads `archive` as `version` of `app` and expects 201.
    pub async fn upload_ok(
        &self,
        app: &str,
        version: &str,
        phases: &str,
        archive: Vec<u8>,
    ) -> Value {
        let fields = [
            ("plugin_id", app),
            ("version", version),
            ("plugin_language", "rust"),
            ("phases", phases),
            ("conf", "hello"),
        ];
        let r = self
            .upload(&self.admin_token, &fields, Some(("src.tar.gz", archive)))
            .await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// The build log of build `id`, as text.
    pub async fn logs(&self, id: &str) -> String {
        self.get(&format!("/version_build/{id}/logs"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn build(&self, id: &str) -> Value {
        let r = self
            .get(&format!("/version_build/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Polls a build until it reaches a terminal state.
    pub async fn wait_for_build(&self, id: &str, deadline: Duration) -> Value {
        self.wait_for_state(
            id,
            &["succeeded", "failed", "crashed", "cancelled"],
            deadline,
        )
        .await
    }

    pub async fn wait_for_state(&self, id: &str, states: &[&str], deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let build = self.build(id).await;
            if states.contains(&build["state"].as_str().unwrap()) {
                return build;
            }
            assert!(
                Instant::now() < end,
                "build {id} still {} after {deadline:?}",
                build["state"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every file under the blob directory, for "nothing was written" checks.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.dir.path().join("blobs"), &mut out);
        out.sort();
        out
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)
        } else {
            out.push(path)
        }
    }
}

fn last_line(out: &str) -> String {
    out.lines().last().unwrap().trim().to_owned()
}

fn read_token(path: &Path) -> String {
    let token = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{} must be private", path.display());
    token.trim().to_owned()
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use kiln_testkit::archive::{tar_gz, tar_gz_dir, zip};

/// A minimal crate, enough for the server's archive checks.
pub fn small_crate() -> Vec<u8> {
    tar_gz(&[
        ("Cargo.toml", b"[package]\nname = \"f\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[lib]\ncrate-type = [\"cdylib\"]\n"),
        ("src/lib.rs", b"// a filter\n"),
    ])
}

/// The path of the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Sends a POST over a raw socket, writing the body from another thread
/// while the answer is read: a server that refuses a body early closes the
/// connection mid-upload, which ordinary clients report as a broken pipe
/// instead of the answer. Returns the status and the body of the answer.
pub fn raw_post(
    base: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, String) {
    use std::io::Read;
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        for chunk in body.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// A multipart body with the given text fields and one file field.
pub fn multipart_body(boundary: &str, fields: &[(&str, &str)], file: (&str, &[u8])) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"src.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n", file.0).as_bytes(),
    );
    body.extend_from_slice(file.1);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// The smallest module the server takes for a plugin: it validates and
/// exports the ABI version, the context constructor, an allocator and
/// every phase's callback (all one empty function).
pub fn tiny_plugin() -> Vec<u8> {
    let exports = [
        "proxy_abi_version_0_2_1",
        "proxy_on_context_create",
        "malloc",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_response_headers",
        "proxy_on_response_body",
        "proxy_on_log",
    ];
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // One type () -> (), one function of it.
    m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0, 3, 2, 1, 0]);
    let mut section = vec![exports.len() as u8];
    for name in exports {
        section.push(name.len() as u8);
        section.extend_from_slice(name.as_bytes());
        section.extend_from_slice(&[0, 0]);
    }
    m.push(7);
    // The section's size, as LEB128.
    let mut size = section.len();
    while size >= 0x80 {
        m.push((size as u8 & 0x7f) | 0x80);
        size >>= 7;
    }
    m.push(size as u8);
    m.extend_from_slice(&section);
    // Its body: no locals, `end`.
    m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
    m
}

/// [`tiny_plugin`] with a custom section named `name` at its end: another
/// module, as valid, with another sha256.
pub fn tiny_plugin_named(name: &str) -> Vec<u8> {
    let mut m = tiny_plugin();
    assert!(name.len() < 0x7f, "a one-byte LEB128 size");
    m.push(0);
    m.push(name.len() as u8 + 1);
    m.push(name.len() as u8);
    m.extend_from_slice(name.as_bytes());
    m
}
