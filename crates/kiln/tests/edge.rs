//! kiln at the edge, end to end: real sandboxed builds of the add-header
//! example, a real Envoy 1.40 (`scripts/install-prereqs` puts it in
//! `.tools/venv`), the `kiln edge` agent beside it. A promotion reaches the
//! running Envoy without a restart and without a failed request, a
//! rollback brings the previous version back, and a corrupted artifact
//! never reaches Envoy.

mod common;

use common::{Kiln, repo_root, services_required};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cold build downloads and compiles dependencies: be generous.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);
/// How long a promotion may take to reach Envoy ("a few seconds").
const SWAP_DEADLINE: Duration = Duration::from_secs(10);

/// A process stopped (by its pid) when the test ends, however it ends.
struct Process {
    child: Child,
    /// Where its stderr goes.
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what} exited with {status}:\n{}", self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The add-header example packed as the README does.
fn add_header() -> Vec<u8> {
    let dir = repo_root().join("examples/add-header");
    let out = Command::new("tar")
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

/// An origin that answers every request `200 origin`, keeping connections open.
async fn origin() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\norigin";
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

/// What the plugin's `x-kiln-conf` response header says, through Envoy.
async fn conf_served(http: &reqwest::Client, envoy: &str) -> String {
    let r = http.get(format!("{envoy}/hello")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-powered-by"], "kiln", "the filter runs");
    let conf = r.headers()["x-kiln-conf"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "origin");
    conf
}

/// Polls until requests through Envoy show `conf`; how long that took.
async fn wait_for_conf(http: &reqwest::Client, envoy: &str, conf: &str) -> Duration {
    let started = Instant::now();
    loop {
        let served = conf_served(http, envoy).await;
        if served == conf {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SWAP_DEADLINE,
            "Envoy still serves {served:?}, not {conf:?}, after {SWAP_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `extension_config_discovery.http_filter.kiln.config_reload`: the swaps Envoy made.
async fn reloads(http: &reqwest::Client, admin: &str) -> u64 {
    let stats = http
        .get(format!("{admin}/stats?filter=config_reload"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("extension_config_discovery.http_filter.kiln.config_reload: "))
        .unwrap_or_else(|| panic!("no config_reload stat in {stats}"))
        .trim()
        .parse()
        .unwrap()
}

/// Requests sent all along, on a kept-alive connection and on a fresh
/// connection each; every one that was not answered 2xx.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(envoy: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = [
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        ];
        let tasks = clients
            .into_iter()
            .map(|http| {
                let (stop, url) = (stop.clone(), format!("{envoy}/load"));
                tokio::spawn(async move {
                    let (mut sent, mut failures) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {}
                            Ok(r) => failures.push(format!("answered {}", r.status())),
                            Err(e) => failures.push(format!("{e:?}")),
                        }
                    }
                    (sent, failures)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut sent, mut failures) = (0, Vec::new());
        for task in self.tasks {
            let (n, f) = task.await.unwrap();
            sent += n;
            failures.extend(f);
        }
        (sent, failures)
    }
}

async fn upload(kiln: &Kiln, app: &str, version: &str, conf: &str) -> String {
    let fields = [
        ("plugin_id", app),
        ("version", version),
        ("plugin_language", "rust"),
        ("phases", r#"["request_headers","response_headers"]"#),
        ("conf", conf),
    ];
    let r = kiln
        .upload(
            &kiln.admin_token,
            &fields,
            Some(("add-header.tar.gz", add_header())),
        )
        .await;
    let body: Value = r.json().await.unwrap();
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

async fn promote(kiln: &Kiln, app: &str, version: &str) -> Value {
    let r = kiln
        .http
        .put(kiln.url(&format!("/application/{app}/channels/production")))
        .bearer_auth(&kiln.admin_token)
        .json(&json!({ "version_id": version }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn wait_for_file(path: &Path, agent: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        agent.assert_running("kiln edge");
        assert!(
            Instant::now() < deadline,
            "{} not written:\n{}",
            path.display(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_version_reaches_a_running_envoy_and_rolls_back() {
    let envoy_bin = repo_root().join(".tools/venv/bin/envoy");
    if !envoy_bin.exists() {
        assert!(!services_required(), "{} is missing", envoy_bin.display());
        eprintln!(
            "skipped: no Envoy at {} (scripts/install-prereqs installs it)",
            envoy_bin.display()
        );
        return;
    }
    let started = Instant::now();
    let kiln = Kiln::start_with(vec!["--workers".into(), "1".into()]);
    let app = kiln.create_app("edge").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v1 = upload(&kiln, &app, "1.0.0", "v1").await;
    let v2 = upload(&kiln, &app, "2.0.0", "v2").await;
    for id in [&v1, &v2] {
        let built = kiln.wait_for_build(id, BUILD_DEADLINE).await;
        assert_eq!(
            built["state"],
            "succeeded",
            "{built}\n{}",
            kiln.logs(id).await
        );
    }
    eprintln!("built v1 and v2 in {:?}", started.elapsed());
    let edge_token = kiln
        .cli_ok(&["token", "create", "--edge", "--owner", "1", "--app", &app])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let v1_sha = promote(&kiln, &app, &v1).await["version"]["binary_sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    // The agent first: Envoy refuses to start without the filter's file.
    let dir = kiln.data_dir().join("edge");
    let mut agent = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["edge", "--server", &kiln.base, "--edge-token", &edge_token])
            .args([
                "--app",
                &app,
                "--channel",
                "production",
                "--retry-seconds",
                "1",
            ])
            .arg("--dir")
            .arg(&dir)
            .env("KILN_LOG", "info"),
        kiln.data_dir().join("agent.log"),
    );
    let filter_file = dir.join("filter.json");
    wait_for_file(&filter_file, &mut agent).await;

    let (listen, admin, origin) = (free_port(), free_port(), origin().await);
    let bootstrap = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "edge",
            "envoy-config",
            "--listen",
            &format!("127.0.0.1:{listen}"),
        ])
        .args(["--origin", &format!("127.0.0.1:{origin}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let config = kiln.data_dir().join("envoy.yaml");
    std::fs::write(&config, &bootstrap.stdout).unwrap();
    let mut envoy = Process::spawn(
        Command::new(&envoy_bin)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--file-flush-interval-msec", "50", "--log-level", "warn"]),
        kiln.data_dir().join("envoy.log"),
    );
    let (envoy_url, admin_url) = (
        format!("http://127.0.0.1:{listen}"),
        format!("http://127.0.0.1:{admin}"),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        envoy.assert_running("envoy");
        if let Ok(r) = http.get(format!("{admin_url}/ready")).send().await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy not ready:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let envoy_pid = envoy.child.id();

    // v1 serves; then a client keeps sending requests through every swap.
    assert_eq!(conf_served(&http, &envoy_url).await, "v1");
    let load = Load::start(&envoy_url);
    let before = reloads(&http, &admin_url).await;
    promote(&kiln, &app, &v2).await;
    let took = wait_for_conf(&http, &envoy_url, "v2").await;
    eprintln!("v2 reached Envoy {took:?} after its promotion");
    assert!(
        reloads(&http, &admin_url).await > before,
        "the filter was swapped, not Envoy restarted"
    );

    let r = kiln
        .post(&format!("/application/{app}/channels/production/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let took = wait_for_conf(&http, &envoy_url, "v1").await;
    eprintln!("the rollback reached Envoy {took:?} after it was made");

    // A corrupted artifact: the agent refuses it, and v1 keeps serving.
    // Both builds made the same module (only their conf differs), and the
    // server serves it by content from either: corrupt both copies.
    for build in [&v1, &v2] {
        // The binary sits in its report's own directory under the build's.
        let reports = kiln
            .data_dir()
            .join(format!("blobs/apps/{app}/builds/{build}/reports"));
        let report = std::fs::read_dir(&reports)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let blob = report.path().join("plugin.wasm");
        let mut bytes = std::fs::read(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&blob, bytes).unwrap();
    }
    let swaps = reloads(&http, &admin_url).await;
    promote(&kiln, &app, &v2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("not the version's") {
        agent.assert_running("kiln edge");
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = agent.log();
    assert!(log.contains("version 1.0.0 keeps serving"), "{log}");
    let deployed = std::fs::read_to_string(&filter_file).unwrap();
    assert!(
        deployed.contains(&v1_sha),
        "the config still names v1's module: {deployed}"
    );
    assert_eq!(conf_served(&http, &envoy_url).await, "v1");
    assert_eq!(
        reloads(&http, &admin_url).await,
        swaps,
        "nothing reached Envoy"
    );

    let (sent, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 20, "the client kept sending ({sent} requests)");
    envoy.assert_running("envoy");
    assert_eq!(envoy.child.id(), envoy_pid, "the same Envoy all along");
    eprintln!(
        "{sent} requests, none failed; the whole test took {:?}",
        started.elapsed()
    );
}
