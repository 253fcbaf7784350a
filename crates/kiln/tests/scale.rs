//! kiln at scale, end to end: two API-only servers on one PostgreSQL schema
//! and one S3 bucket, two remote `kiln worker`s, real sandboxed builds of
//! `examples/add-header` uploaded through both servers, while a worker is
//! killed mid-build, a server is killed mid-upload, PostgreSQL restarts and
//! the S3 server is away for ten seconds. Every build must still end
//! `succeeded`, once, with the same binary from either server, and nothing
//! of a build may stay on the host.
//!
//! The test starts a PostgreSQL and a SeaweedFS of its own with
//! `scripts/start-postgres` and `scripts/start-s3`: it restarts one and
//! stops the other, which the tests sharing `scripts/test`'s services must
//! not see. It runs in the `sandbox` group (`.config/nextest.toml`).

mod common;

use common::{Kiln, multipart_body, postgres_schema_url, repo_root, services_required};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole run may take to settle after the last disruption.
const DEADLINE: Duration = Duration::from_secs(240);
const BUCKET: &str = "kiln-scale";
/// Short leases, so the killed worker's build is queued again quickly.
const LEASE_SECONDS: &str = "6";
const S3_OUTAGE: Duration = Duration::from_secs(10);
/// The line of a build log after the module passed its checks: the
/// success report follows within seconds.
const CHECKED: &str = "checked: proxy-wasm ABI";
/// Where the sandbox keeps per-run cgroups, v1 and v2.
const CGROUP_DIRS: [&str; 3] = [
    "/sys/fs/cgroup/memory/kiln",
    "/sys/fs/cgroup/pids/kiln",
    "/sys/fs/cgroup/kiln",
];

/// This test's own PostgreSQL and SeaweedFS, stopped on drop.
struct Services {
    dir: tempfile::TempDir,
    database_url: String,
    s3_endpoint: String,
    /// The S3 credentials, for the servers only.
    s3_env: Vec<(String, String)>,
    /// SeaweedFS once this test started it again (before: a process of
    /// `scripts/start-s3`, known by `s3.pid`).
    s3_child: Option<Child>,
}

impl Services {
    /// Starts both, or `None` (the test is skipped) when their programs are
    /// not installed (`scripts/install-prereqs` installs them).
    fn start() -> Option<Services> {
        let repo = repo_root();
        let missing = !repo.join(".tools/venv/bin/weed").exists()
            || !Path::new("/usr/lib/postgresql").exists();
        if missing {
            assert!(
                !services_required(),
                "PostgreSQL and SeaweedFS are required: run scripts/install-prereqs"
            );
            eprintln!(
                "skipped: PostgreSQL or SeaweedFS is not installed (scripts/install-prereqs)"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-scale-services.")
            .tempdir()
            .unwrap();
        // PostgreSQL runs as its own user and must reach its directory.
        set_mode(dir.path(), 0o755);
        let pg = script(&repo, "start-postgres", &[&dir.path().join("pg")]);
        let database_url = pg.lines().last().unwrap().trim().to_owned();
        // scripts/start-postgres turns synchronous_commit off for speed; a
        // production server keeps it on, and without it an immediate
        // restart forgets commits already answered (a 201 upload, say).
        let out = Command::new("psql")
            .args([&database_url, "-q", "-c"])
            .arg("ALTER DATABASE kiln SET synchronous_commit = on")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s3 = script(
            &repo,
            "start-s3",
            &[&dir.path().join("s3"), Path::new(BUCKET)],
        );
        let vars: BTreeMap<String, String> = s3
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let s3_env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]
            .iter()
            .map(|k| (k.to_string(), vars[*k].clone()))
            .collect();
        Some(Services {
            database_url,
            s3_endpoint: vars["KILN_TEST_S3_ENDPOINT"].clone(),
            s3_env,
            s3_child: None,
            dir,
        })
    }

    fn pg_dir(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    fn s3_dir(&self) -> PathBuf {
        self.dir.path().join("s3")
    }

    /// `pg_ctl restart -m immediate`, as `scripts/start-postgres` runs
    /// pg_ctl: as the postgres user, on the cluster in `pg/pgdata`.
    fn restart_postgres(&self) {
        let bin = std::fs::read_to_string(self.pg_dir().join("postgres.bin")).unwrap();
        // The new postmaster would hold pipes open: its output goes to the log.
        let status = Command::new("setpriv")
            .args(["--reuid", "postgres", "--regid", "postgres"])
            .arg("--init-groups")
            .arg(Path::new(bin.trim()).join("pg_ctl"))
            .arg("-D")
            .arg(self.pg_dir().join("pgdata"))
            .arg("-l")
            .arg(self.pg_dir().join("postgres.log"))
            .args(["-m", "immediate", "-w", "-t", "30", "restart"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl restart: {status}");
    }

    /// Kills SeaweedFS (`kill -9`) and returns its command line, to start
    /// it again on the same ports and data.
    async fn kill_s3(&mut self) -> Vec<String> {
        let pid = std::fs::read_to_string(self.s3_dir().join("s3.pid")).unwrap();
        let pid = pid.trim();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = String::from_utf8(cmdline)
            .unwrap()
            .split('\0')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        assert!(args.iter().any(|a| a == "mini"), "{pid} is weed: {args:?}");
        if let Some(mut child) = self.s3_child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            // SAFETY: kill(2) on the SeaweedFS this test started.
            unsafe { libc_kill(pid.parse().unwrap(), 9) };
            wait_until(Duration::from_secs(10), "SeaweedFS to exit", || {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .map_or(true, |s| s.contains("zombie"))
            })
            .await;
        }
        args
    }

    /// Starts SeaweedFS again with `args` and waits until it answers.
    async fn start_s3(&mut self, args: &[String]) {
        let log = std::fs::File::create(self.s3_dir().join("s3-again.log")).unwrap();
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(self.s3_dir().join("s3.pid"), child.id().to_string()).unwrap();
        self.s3_child = Some(child);
        let url = format!("{}/{BUCKET}", self.s3_endpoint);
        wait_until(Duration::from_secs(60), "SeaweedFS to answer", || {
            // Unsigned, so 403 once it is up.
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .unwrap();
            matches!(&out.stdout[..], b"403" | b"200")
        })
        .await;
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(mut child) = self.s3_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in [self.pg_dir(), self.s3_dir()] {
            let _ = Command::new(repo_root().join("scripts/stop-services"))
                .arg(dir)
                .status();
        }
    }
}

fn script(repo: &Path, name: &str, args: &[&Path]) -> String {
    let out = Command::new(repo.join("scripts").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/{name} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Polls `done` every 100 ms until it holds, for at most `limit`.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `kiln worker` process, killed on drop.
struct Worker(Child);

impl Worker {
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// `kill -9`, then reaps it.
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM, then waits: a worker stops cleanly.
    fn stop(&mut self) {
        // SAFETY: kill(2) on a worker this test started.
        unsafe { libc_kill(self.0.id() as i32, 15) };
        let status = self.0.wait().unwrap();
        assert!(status.success(), "a worker stops cleanly: {status}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kiln worker` with one builder, holding only the server's URL and its
/// own token: no store credential, no database URL in its environment.
fn start_worker(server: &str, token: &str, sandbox_root: &Path) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["worker", "--server", server, "--workers", "1"])
        .arg("--sandbox-root")
        .arg(sandbox_root)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("KILN_WORKER_TOKEN", token)
        .env(
            "KILN_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .unwrap();
    Worker(child)
}

/// `examples/add-header` packed as the build tests do.
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

fn fields<'a>(app: &'a str, version: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("plugin_id", app),
        ("version", version),
        ("plugin_language", "rust"),
        ("phases", r#"["request_headers","response_headers"]"#),
        ("conf", "hello"),
    ]
}

/// Uploads `version` through `kiln` as a client would: again while the
/// server cannot be reached or answers 503. Returns the build's id.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    app: &str,
    version: &str,
    archive: &[u8],
) -> String {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let mut form = Form::new();
        for (k, v) in fields(app, version) {
            form = form.text(k, v.to_owned());
        }
        form = form.part(
            "source_code",
            Part::bytes(archive.to_vec()).file_name("src.tar.gz"),
        );
        let answer = http
            .post(format!("{base}/version"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == StatusCode::CREATED => {
                let body: Value = r.json().await.unwrap();
                return body["id"].as_str().unwrap().to_owned();
            }
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(r) => panic!(
                "upload of {version}: {} {}",
                r.status(),
                r.text().await.unwrap()
            ),
            Err(e) => eprintln!("upload of {version}: {e}; again"),
        }
        assert!(
            Instant::now() < end,
            "upload of {version} not accepted in time"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The application's builds (one page holds them all), or `None` while the
/// server is unavailable.
async fn builds(kiln: &Kiln, app: &str) -> Option<Vec<Value>> {
    let r = kiln
        .get(&format!("/version_build?application_id={app}&limit=200"))
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.json().await.ok()
}

fn count(builds: &[Value], state: &str) -> usize {
    builds.iter().filter(|b| b["state"] == state).count()
}

/// The run cgroups that kiln process `pid` made.
fn run_cgroups(pid: u32) -> Vec<PathBuf> {
    let own = format!("run-{pid}-");
    CGROUP_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&own))
        .map(|e| e.path())
        .collect()
}

/// Mount points at or under `root`.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&root))
        .collect()
}

/// What a sandbox root holds besides `bin` (the binary trials run from).
fn scratch_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.ends_with("bin"))
        .collect()
}

/// Live (not zombie) processes of the sandbox user that belong to this
/// test: in a run cgroup of one of `kilns`, or started on one of `roots`
/// (other kilns on the host may be building beside it).
fn sandbox_processes(kilns: &[u32], roots: &[&Path]) -> Vec<String> {
    let out = Command::new("id")
        .args(["-u", "kiln-sandbox"])
        .output()
        .unwrap();
    let uid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let runs: Vec<String> = kilns.iter().map(|pid| format!("run-{pid}-")).collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let owned = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(uid.as_str()));
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("zombie"));
        if !owned || zombie {
            continue;
        }
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = runs.iter().any(|run| cgroup.contains(run.as_str()))
            || roots
                .iter()
                .any(|root| cmdline.contains(root.to_string_lossy().as_ref()));
        if ours {
            found.push(cmdline);
        }
    }
    found
}

/// Sends all headers and half the body of an upload to `kiln`, then kills
/// the server with `kill -9` while it waits for the rest.
fn kill_mid_upload(kiln: &mut Kiln, app: &str, version: &str, archive: &[u8]) {
    let boundary = "kiln-scale-boundary";
    let body = multipart_body(boundary, &fields(app, version), ("source_code", archive));
    let addr = kiln.base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /version HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        kiln.admin_token,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream.flush().unwrap();
    // The server has the request and waits for the rest of its body.
    std::thread::sleep(Duration::from_millis(300));
    kiln.kill();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 201"),
        "half an upload was accepted"
    );
}

/// The value of the sample `name` (with its labels) in a scrape, or 0.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn two_servers_and_two_workers_survive_kills_and_outages() {
    let started = Instant::now();
    let Some(mut services) = Services::start() else {
        return;
    };
    let database_url = postgres_schema_url(&services.database_url).await;
    let key_dir = tempfile::tempdir().unwrap();
    let signing_key = key_dir.path().join("signing.key");
    std::fs::write(&signing_key, hex::encode(rand_bytes())).unwrap();
    set_mode(&signing_key, 0o600);
    let shared_worker_token = hex::encode(rand_bytes());
    let server_args: Vec<String> = [
        "--workers",
        "0",
        "--database-url",
        &database_url,
        "--blob-store",
        &format!("s3://{BUCKET}"),
        "--s3-endpoint",
        &services.s3_endpoint,
        "--signing-key",
        &signing_key.display().to_string(),
        "--worker-token",
        &shared_worker_token,
        "--lease-seconds",
        LEASE_SECONDS,
        "--reap-interval-seconds",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut a = Kiln::start_with_env(server_args.clone(), services.s3_env.clone());
    a.wait_healthy().await;
    // The second server joins the database the first set up: the same
    // owners and tokens.
    let mut b = Kiln::start_with_env(server_args, services.s3_env.clone());
    b.wait_healthy().await;
    b.admin_token = a.admin_token.clone();
    let token = a.admin_token.clone();

    let tokens = [
        a.token_for_worker("build-host-1"),
        a.token_for_worker("build-host-2"),
    ];
    std::fs::create_dir_all("/var/lib/kiln").unwrap();
    let roots = [
        tempfile::tempdir_in("/var/lib/kiln").unwrap(),
        tempfile::tempdir_in("/var/lib/kiln").unwrap(),
    ];
    let mut w1 = start_worker(&a.base, &tokens[0], roots[0].path());
    let mut w2 = start_worker(&b.base, &tokens[1], roots[1].path());

    let app = a.create_app("scale").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let archive = add_header();
    let mut ids = Vec::new();
    for (i, kiln) in [&a, &b, &a, &b].into_iter().enumerate() {
        ids.push(
            upload(
                &kiln.http,
                &kiln.base,
                &token,
                &app,
                &format!("1.0.{i}"),
                &archive,
            )
            .await,
        );
    }

    eprintln!("scale: {:.1?} uploaded 4 builds", started.elapsed());
    // 1. kill -9 of a worker mid-build: once its sandbox runs a command.
    let killed = w1.id();
    wait_until(Duration::from_secs(120), "worker 1 to build", || {
        !run_cgroups(killed).is_empty()
    })
    .await;
    w1.kill();
    let left = run_cgroups(killed);
    assert!(
        !left.is_empty(),
        "a killed worker leaves its run behind, for the sweep"
    );
    w1 = start_worker(&a.base, &tokens[0], roots[0].path());
    wait_until(
        Duration::from_secs(30),
        "the sweep of worker 1's run",
        || run_cgroups(killed).is_empty(),
    )
    .await;

    eprintln!(
        "scale: {:.1?} worker 1 killed mid-build and swept",
        started.elapsed()
    );
    // 2. kill -9 of a server mid-upload, started again where its worker
    // and clients expect it; the client sends the upload again.
    kill_mid_upload(&mut a, &app, "1.0.4", &archive);
    a.respawn().await;
    ids.push(upload(&a.http, &a.base, &token, &app, "1.0.4", &archive).await);

    eprintln!(
        "scale: {:.1?} server A killed mid-upload and back",
        started.elapsed()
    );
    // 3. PostgreSQL restarts while builds are queued and running.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(list) = builds(&b, &app).await
            && count(&list, "running") > 0
            && count(&list, "queued") > 0
        {
            break;
        }
        assert!(Instant::now() < end, "no build queued and one running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    services.restart_postgres();

    eprintln!("scale: {:.1?} PostgreSQL restarted", started.elapsed());
    // 4. The S3 server is away for ten seconds from the moment a build
    // has compiled and passed its checks (its live log says so), so that
    // its report (the binary goes to S3) meets the outage; an upload made
    // meanwhile is accepted once it is back.
    let fresh = [
        upload(&b.http, &b.base, &token, &app, "1.0.5", &archive).await,
        upload(&a.http, &a.base, &token, &app, "1.0.6", &archive).await,
    ];
    ids.extend(fresh.iter().cloned());
    let end = Instant::now() + Duration::from_secs(120);
    'checked: loop {
        // The live log is on the server the building worker reaches.
        for id in &fresh {
            for kiln in [&a, &b] {
                if kiln.logs(id).await.contains(CHECKED) {
                    break 'checked;
                }
            }
        }
        assert!(Instant::now() < end, "neither 1.0.5 nor 1.0.6 got checked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s3_args = services.kill_s3().await;
    let during = {
        let (http, base) = (b.http.clone(), b.base.clone());
        let (token, app, archive) = (token.clone(), app.clone(), archive.clone());
        tokio::spawn(async move { upload(&http, &base, &token, &app, "1.0.7", &archive).await })
    };
    tokio::time::sleep(S3_OUTAGE).await;
    services.start_s3(&s3_args).await;
    ids.push(during.await.unwrap());

    eprintln!("scale: {:.1?} S3 back", started.elapsed());
    // Every build ends, and succeeds.
    let end = Instant::now() + DEADLINE;
    let list = loop {
        if let Some(list) = builds(&a, &app).await
            && list.len() == ids.len()
            && list
                .iter()
                .all(|b| b["state"] != "queued" && b["state"] != "running")
        {
            break list;
        }
        assert!(Instant::now() < end, "builds did not end in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let failed: Vec<&Value> = list.iter().filter(|b| b["state"] != "succeeded").collect();
    for build in &failed {
        let id = build["id"].as_str().unwrap();
        eprintln!("{build}\n{}", a.logs(id).await);
    }
    assert!(failed.is_empty(), "builds that did not succeed: {failed:?}");
    for build in &list {
        eprintln!(
            "scale: {} attempt {} by {}",
            build["version"], build["attempt"], build["worker"]
        );
    }
    let built: BTreeSet<String> = list
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(built, ids.iter().cloned().collect(), "one build per upload");

    eprintln!("scale: {:.1?} every build ended", started.elapsed());
    // Exactly one version per build, and the same binary from either server.
    let versions: Vec<Value> = a
        .get(&format!("/version?application_id={app}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version_ids: Vec<String> = versions
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(version_ids.len(), built.len(), "{versions:?}");
    assert_eq!(
        version_ids.iter().cloned().collect::<BTreeSet<_>>(),
        built,
        "{versions:?}"
    );
    for version in &versions {
        let id = version["id"].as_str().unwrap();
        let mut sums = Vec::new();
        for kiln in [&a, &b] {
            let r = kiln
                .get(&format!("/version/{id}/binary"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            sums.push(sha256(&r.bytes().await.unwrap()));
        }
        assert_eq!(sums[0], sums[1], "version {id} differs between servers");
        assert_eq!(sums[0], version["binary_sha256"], "version {id}");
    }

    // Both servers observed claims and reports (A's counts restarted with
    // it, so the sums stay at or under the number of builds).
    let mut waits = 0;
    let mut compiles = 0;
    for kiln in [&a, &b] {
        let text = kiln
            .get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        waits += metric(&text, "kiln_queue_wait_seconds_count");
        compiles += metric(
            &text,
            "kiln_build_stage_duration_seconds_count{stage=\"compile\"}",
        );
    }
    assert!(
        (1..=ids.len() as u64).contains(&waits),
        "{waits} queue waits"
    );
    assert!(
        (1..=ids.len() as u64).contains(&compiles),
        "{compiles} compiles"
    );

    // Nothing of a build is left on the host.
    for root in &roots {
        assert_eq!(scratch_dirs(root.path()), Vec::<PathBuf>::new());
        assert_eq!(mounts_under(root.path()), Vec::<String>::new());
    }
    for pid in [killed, w1.id(), w2.id()] {
        assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "runs of {pid}");
    }
    let kilns = [killed, w1.id(), w2.id()];
    let root_paths = [roots[0].path(), roots[1].path()];
    assert_eq!(sandbox_processes(&kilns, &root_paths), Vec::<String>::new());

    w1.stop();
    w2.stop();
    a.stop();
    b.stop();
    eprintln!("scale: {:?}", started.elapsed());
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
