//! `kiln-bench queue`: the API and two workers' claims while builds wait,
//! on SQLite and on PostgreSQL, at each queue depth against depth 10.
//!
//! For each database one `kiln serve --workers 0` (the release binary) runs
//! on it, with blobs in a local directory. Ten owners, one application each,
//! share the queue evenly. The queue is filled up to each depth by uploads
//! through the API while it is at most [`UPLOAD_FILL_LIMIT`] deep, beyond
//! that through the store's own insert path (`MetaStore::create_build`,
//! all such builds sharing one stored source). At each depth it measures:
//! uploads, reads of one build, the first and the last page of one owner's
//! queued builds (by keyset), and two workers claiming back to back. The
//! claims are first topped up by as many builds, so the queue drains back
//! to the depth while they run; claimed builds are then cancelled.

use anyhow::{Context, bail, ensure};
use kiln_domain::{AppId, BuildId, BuildOptions, Language, OwnerId, Phases};
use kiln_store::{BlobStore, MetaStore, NewBuild, keys};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Owners sharing the queue, each with one application.
const OWNERS: i64 = 10;
/// Deeper than this, the queue is filled through the store.
const UPLOAD_FILL_LIMIT: usize = 10_000;
/// Requests of each kind measured at each depth.
const SAMPLES: usize = 200;
/// Claims measured at each depth, shared by the two workers.
const CLAIMS: usize = 200;
/// Clients sending the measured requests at once.
const CLIENTS: usize = 4;
/// Uploads or inserts in flight while filling.
const FILLERS: usize = 8;
/// Builds per page of the listing.
const PAGE: usize = 100;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `kiln serve` of the bench, on its own data dir and a free port.
struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    database_url: String,
    kiln: PathBuf,
}

impl Server {
    fn start(kiln: &Path, postgres: Option<&str>) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let database_url = match postgres {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}", dir.path().join("kiln.db").display()),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(kiln)
            .args([
                "serve",
                "--workers",
                "0",
                "--max-unfinished-builds",
                "10000000",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--database-url")
            .arg(&database_url)
            // Logged as in production, to a file of its own.
            .stderr(std::fs::File::create(dir.path().join("serve.log"))?)
            .stdout(Stdio::null())
            .spawn()
            .context("starting kiln serve")?;
        Ok(Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            database_url,
            kiln: kiln.to_owned(),
        })
    }

    async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("kiln serve did not become ready within a minute")
    }

    /// A token printed by `kiln token create ARGS` on this server's store.
    fn token(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.kiln)
            .args(["token", "create"])
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--database-url")
            .arg(&self.database_url)
            .output()?;
        ensure!(
            out.status.success(),
            "kiln token create {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout)?;
        Ok(stdout.lines().last().unwrap_or_default().trim().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An owner of the bench: its token and its application.
#[derive(Clone)]
struct Seat {
    owner: OwnerId,
    token: String,
    app: AppId,
}

/// Everything the measures share.
struct Bed {
    http: reqwest::Client,
    base: String,
    seats: Vec<Seat>,
    workers: [String; 2],
    meta: MetaStore,
    archive: Vec<u8>,
    /// The source every build filled through the store points at.
    shared_source: String,
    next_version: AtomicU64,
    /// The PostgreSQL database, whose statistics are refreshed after each
    /// fill.
    postgres: Option<String>,
    /// Builds known to be queued with their owner's seat, to read one.
    queued: std::sync::Mutex<Vec<(BuildId, usize)>>,
}

/// Latencies of one kind of request.
#[derive(Default, Clone)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: usize) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = (p * sorted.len()).div_ceil(100).max(1);
        sorted[rank - 1]
    }
}

/// What one depth measured.
struct Depth {
    depth: usize,
    filled_by: &'static str,
    fill_per_second: f64,
    upload: Latencies,
    read: Latencies,
    first_page: Latencies,
    last_page: Latencies,
    /// Builds on the first page: fewer than [`PAGE`] while the owner has
    /// fewer queued.
    page_rows: usize,
    claim: Latencies,
    claims_per_second: f64,
}

impl Bed {
    async fn open(server: &Server, http: reqwest::Client) -> anyhow::Result<Bed> {
        let meta = MetaStore::connect(&server.database_url).await?;
        let admin = std::fs::read_to_string(server.dir.path().join("admin.token"))?;
        let mut seats = Vec::new();
        for owner in 1..=OWNERS {
            let token = match owner {
                1 => admin.trim().to_owned(),
                n => server.token(&["--owner", &n.to_string()])?,
            };
            let app = create_app(&http, &server.base, &token, owner).await?;
            seats.push(Seat {
                owner: OwnerId(owner),
                token,
                app,
            });
        }
        let workers = [
            server.token(&["--worker", "bench-1"])?,
            server.token(&["--worker", "bench-2"])?,
        ];
        let archive = source_archive()?;
        let blobs = BlobStore::local(&server.dir.path().join("blobs"))?;
        let shared_source = keys::source(seats[0].app, BuildId::new(), "tar.gz");
        blobs.put(&shared_source, archive.clone().into()).await?;
        Ok(Bed {
            http,
            base: server.base.clone(),
            seats,
            workers,
            meta,
            archive,
            shared_source,
            next_version: AtomicU64::new(0),
            postgres: server
                .database_url
                .starts_with("postgres")
                .then(|| server.database_url.clone()),
            queued: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn seat(&self, n: usize) -> &Seat {
        &self.seats[n % self.seats.len()]
    }

    fn version(&self) -> String {
        format!("1.0.{}", self.next_version.fetch_add(1, Ordering::Relaxed))
    }

    /// One upload through the API, as the `n`th owner.
    async fn upload(&self, n: usize) -> anyhow::Result<Duration> {
        let seat = self.seat(n);
        let form = Form::new()
            .text("plugin_id", seat.app.to_string())
            .text("version", self.version())
            .text("plugin_language", "rust")
            .text("phases", r#"["request_headers"]"#)
            .part(
                "source_code",
                Part::bytes(self.archive.clone()).file_name("source.tar.gz"),
            );
        let started = Instant::now();
        let r = self
            .http
            .post(format!("{}/version", self.base))
            .bearer_auth(&seat.token)
            .multipart(form)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        let took = started.elapsed();
        ensure!(status.as_u16() == 201, "upload answered {status}: {body}");
        let id = body["id"].as_str().context("a build without an id")?;
        self.remember(BuildId::parse(id)?, n);
        Ok(took)
    }

    /// One build queued through the store's insert path, as the `n`th owner.
    async fn insert(&self, n: usize) -> anyhow::Result<()> {
        let seat = self.seat(n);
        let new = NewBuild {
            id: BuildId::new(),
            application_id: seat.app,
            owner_id: seat.owner,
            version: self.version().parse()?,
            language: Language::Rust,
            phases: Phases::parse_json(r#"["request_headers"]"#)?,
            conf: String::new(),
            notes: String::new(),
            options: BuildOptions::default(),
            source_location: self.shared_source.clone(),
        };
        self.meta.create_build(&new).await?;
        self.remember(new.id, n);
        Ok(())
    }

    fn remember(&self, id: BuildId, n: usize) {
        let seat = n % self.seats.len();
        self.queued.lock().unwrap().push((id, seat));
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<(Duration, Value)> {
        let started = Instant::now();
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        let took = started.elapsed();
        ensure!(status.is_success(), "GET {path} answered {status}: {body}");
        Ok((took, body))
    }

    /// A read of one queued build (spread over all of them), as its owner.
    async fn read(&self, n: usize) -> anyhow::Result<Duration> {
        let (id, seat) = {
            let queued = self.queued.lock().unwrap();
            queued[(n * 7919) % queued.len()]
        };
        let path = format!("/version_build/{id}");
        Ok(self.get(&path, &self.seats[seat].token).await?.0)
    }

    /// One page of the first owner's queued builds, after `after` if given.
    async fn page(&self, after: Option<&str>) -> anyhow::Result<(Duration, Vec<String>)> {
        let mut path = format!("/version_build?state=queued&limit={PAGE}");
        if let Some(after) = after {
            path += &format!("&after={after}");
        }
        let (took, body) = self.get(&path, &self.seats[0].token).await?;
        let ids = body
            .as_array()
            .context("a page is a JSON array")?
            .iter()
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect();
        Ok((took, ids))
    }

    /// The cursor of the first owner's last page of queued builds, found by
    /// walking every page; `None` when they fit on one.
    async fn last_page_cursor(&self) -> anyhow::Result<Option<String>> {
        let mut cursor = None;
        let (_, mut ids) = self.page(None).await?;
        while ids.len() == PAGE {
            let next = ids.last().cloned();
            let (_, next_ids) = self.page(next.as_deref()).await?;
            if next_ids.is_empty() {
                break;
            }
            cursor = next;
            ids = next_ids;
        }
        Ok(cursor)
    }

    /// One claim as worker `w`, with its build's id and owner's seat.
    async fn claim(&self, w: usize) -> anyhow::Result<(Duration, String, i64)> {
        let started = Instant::now();
        let r = self
            .http
            .post(format!("{}/internal/builds/claim", self.base))
            .bearer_auth(&self.workers[w])
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        let took = started.elapsed();
        ensure!(status.as_u16() == 200, "claim answered {status}: {body}");
        let id = body["build"]["id"]
            .as_str()
            .context("a claim without a build")?;
        let owner = body["build"]["owner_id"]
            .as_i64()
            .context("a build without an owner")?;
        Ok((took, id.to_owned(), owner))
    }

    /// Cancels a claimed build as its owner, so that it stops counting as
    /// running.
    async fn cancel(&self, id: &str, owner: i64) -> anyhow::Result<()> {
        let seat = self
            .seats
            .iter()
            .find(|s| s.owner.0 == owner)
            .context("a claimed build of another owner")?;
        let r = self
            .http
            .post(format!("{}/version_build/{id}/cancel", self.base))
            .bearer_auth(&seat.token)
            .send()
            .await?;
        ensure!(r.status().is_success(), "cancel answered {}", r.status());
        Ok(())
    }
}

async fn create_app(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    owner: i64,
) -> anyhow::Result<AppId> {
    let r = http
        .post(format!("{base}/application"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": format!("bench-{owner}"), "notes": "queue bench"}))
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 201,
        "creating an application: {}",
        r.status()
    );
    let app: Value = r.json().await?;
    Ok(AppId::parse(
        app["id"].as_str().context("an application id")?,
    )?)
}

/// `examples/add-header` as the `.tar.gz` a customer uploads.
fn source_archive() -> anyhow::Result<Vec<u8>> {
    let out = Command::new("tar")
        .args(["-czf", "-", "--exclude=./target", "-C"])
        .arg(repo().join("examples/add-header"))
        .arg(".")
        .output()?;
    ensure!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Runs `samples` calls of `call` from [`CLIENTS`] clients at once.
async fn measure<F, Fut>(bed: &Arc<Bed>, samples: usize, call: F) -> anyhow::Result<Latencies>
where
    F: Fn(Arc<Bed>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<Duration>> + Send,
{
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (bed, call) = (bed.clone(), call.clone());
        clients.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for n in (client..samples).step_by(CLIENTS) {
                took.push(call(bed.clone(), n).await?);
            }
            anyhow::Ok(took)
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await??);
    }
    Ok(Latencies(all))
}

/// Queues `count` more builds, [`FILLERS`] at a time, through the API or
/// the store; returns builds per second.
async fn fill(bed: &Arc<Bed>, count: usize, through_api: bool) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..FILLERS {
        let (bed, next) = (bed.clone(), next.clone());
        fillers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= count {
                    return anyhow::Ok(());
                }
                match through_api {
                    true => bed.upload(n).await.map(drop)?,
                    false => bed.insert(n).await?,
                }
            }
        }));
    }
    for filler in fillers {
        filler.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Brings PostgreSQL's planner statistics up to date, as its autovacuum
/// does within a minute of a large change in production: the figures are
/// those of a database that knows its size. SQLite keeps none unless asked,
/// and kiln does not ask.
fn analyze(database_url: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([database_url, "-qc", "ANALYZE builds"])
        .output()
        .context("running psql")?;
    ensure!(
        out.status.success(),
        "ANALYZE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn queued_now(bed: &Bed) -> anyhow::Result<usize> {
    let counts = bed.meta.queue_counts().await?;
    Ok(counts
        .by_state
        .iter()
        .find(|(state, _)| *state == kiln_domain::BuildState::Queued)
        .map_or(0, |(_, n)| *n as usize))
}

/// Two workers claim [`CLAIMS`] builds back to back from a queue topped up
/// by as many; the claimed builds are cancelled afterwards.
async fn claims(bed: &Arc<Bed>) -> anyhow::Result<(Latencies, f64)> {
    fill(bed, CLAIMS, false).await?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..2 {
        let bed = bed.clone();
        workers.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            for _ in 0..CLAIMS / 2 {
                claimed.push(bed.claim(w).await?);
            }
            anyhow::Ok(claimed)
        }));
    }
    let mut claimed = Vec::new();
    for worker in workers {
        claimed.extend(worker.await??);
    }
    let per_second = CLAIMS as f64 / started.elapsed().as_secs_f64();
    for (_, id, owner) in &claimed {
        bed.cancel(id, *owner).await?;
    }
    Ok((
        Latencies(claimed.into_iter().map(|c| c.0).collect()),
        per_second,
    ))
}

async fn measure_depth(bed: &Arc<Bed>, depth: usize) -> anyhow::Result<Depth> {
    let missing = depth.saturating_sub(queued_now(bed).await?);
    let through_api = depth <= UPLOAD_FILL_LIMIT;
    eprintln!("queue: filling to {depth} ({missing} more builds)");
    let fill_per_second = fill(bed, missing, through_api).await?;
    if let Some(url) = &bed.postgres {
        analyze(url)?;
    }
    let read = measure(bed, SAMPLES, |bed, n| async move { bed.read(n).await }).await?;
    let first_page = measure(
        bed,
        SAMPLES,
        |bed, _| async move { Ok(bed.page(None).await?.0) },
    )
    .await?;
    let page_rows = bed.page(None).await?.1.len();
    let cursor = Arc::new(bed.last_page_cursor().await?);
    let last_page = measure(bed, SAMPLES, move |bed, _| {
        let cursor = cursor.clone();
        async move { Ok(bed.page(cursor.as_deref()).await?.0) }
    })
    .await?;
    let (claim, claims_per_second) = claims(bed).await?;
    let upload = measure(bed, SAMPLES, |bed, n| async move { bed.upload(n).await }).await?;
    Ok(Depth {
        depth,
        filled_by: if through_api {
            "API uploads"
        } else {
            "store inserts"
        },
        fill_per_second,
        upload,
        read,
        first_page,
        last_page,
        page_rows,
        claim,
        claims_per_second,
    })
}

/// One database's run: every depth, then the plans at the deepest.
struct Run {
    backend: &'static str,
    depths: Vec<Depth>,
    plans: Vec<(&'static str, String)>,
}

async fn run_on(
    backend: &'static str,
    kiln: &Path,
    postgres: Option<&str>,
    depths: &[usize],
) -> anyhow::Result<Run> {
    let server = Server::start(kiln, postgres)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(FILLERS + CLIENTS)
        .build()?;
    server.wait_ready(&http).await?;
    let bed = Arc::new(Bed::open(&server, http).await?);
    let mut measured = Vec::new();
    for &depth in depths {
        let at = measure_depth(&bed, depth).await?;
        eprintln!(
            "queue: {backend} at {depth}: read p99 {:?}, upload p99 {:?}, claim p50 {:?}",
            at.read.percentile(99),
            at.upload.percentile(99),
            at.claim.percentile(50)
        );
        measured.push(at);
    }
    let plans = bed.meta.queue_plans(bed.seats[0].owner).await?;
    Ok(Run {
        backend,
        depths: measured,
        plans,
    })
}

pub async fn run(depths: Vec<usize>) -> anyhow::Result<()> {
    let kiln = match std::env::var_os("KILN_BENCH_KILN") {
        Some(path) => PathBuf::from(path),
        None => repo().join("target/release/kiln"),
    };
    ensure!(
        kiln.exists(),
        "{} is missing: build it with cargo build --release -p kiln",
        kiln.display()
    );
    let postgres = std::env::var("KILN_BENCH_DATABASE_URL")
        .context("KILN_BENCH_DATABASE_URL (a PostgreSQL database) is unset: run scripts/bench queue, which starts one")?;
    let sqlite = run_on("SQLite", &kiln, None, &depths).await?;
    let pg = run_on("PostgreSQL", &kiln, Some(&postgres), &depths).await?;
    let report = report(&[sqlite, pg]);
    let path = repo().join("bench/results/queue.md");
    std::fs::write(&path, report)?;
    eprintln!("queue: wrote {}", path.display());
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn spread(l: &Latencies) -> String {
    format!("{} / {}", ms(l.percentile(50)), ms(l.percentile(99)))
}

/// How many times slower the deepest depth's median is than `base`'s.
fn against(run: &Run, base: usize, of: fn(&Depth) -> &Latencies) -> String {
    let Some(base) = run.depths.iter().find(|d| d.depth == base) else {
        return "-".into();
    };
    let ratio = of(deep(run)).percentile(50).as_secs_f64() / of(base).percentile(50).as_secs_f64();
    format!("{ratio:.2}×")
}

/// The shallowest depth at which a page is full: a page of one build is
/// not the same work as a page of a hundred, whatever the depth.
fn first_full_page(run: &Run) -> usize {
    run.depths
        .iter()
        .find(|d| d.page_rows == PAGE)
        .map_or(run.depths[0].depth, |d| d.depth)
}

fn deep(run: &Run) -> &Depth {
    run.depths.last().expect("a depth")
}

fn goals(runs: &[Run]) -> String {
    let (first, deepest) = (
        runs[0].depths[0].depth,
        runs[0].depths.last().expect("a depth").depth,
    );
    let mut rows = String::new();
    let mut row = |what: &str, goal: &str, cell: &dyn Fn(&Run) -> String| {
        let cells: Vec<String> = runs.iter().map(cell).collect();
        let _ = writeln!(rows, "| {what} | {} | {goal} |", cells.join(" | "));
    };
    row("read of one build, p99 (ms)", "under 50", &|r| {
        ms(deep(r).read.percentile(99))
    });
    row("upload, p99 (ms)", "under 200", &|r| {
        ms(deep(r).upload.percentile(99))
    });
    row(
        &format!("claim, median against depth {first}"),
        "at most 2×",
        &|r| against(r, first, |d| &d.claim),
    );
    let full = first_full_page(&runs[0]);
    let page_base = match full == first {
        true => format!("depth {first}"),
        false => format!("depth {full}, the first with a full page of {PAGE}"),
    };
    row(
        &format!("first page, median against {page_base}"),
        "at most 2×",
        &|r| against(r, full, |d| &d.first_page),
    );
    row(
        &format!("last page, median against {page_base}"),
        "at most 2×",
        &|r| against(r, full, |d| &d.last_page),
    );
    row("claims per second, two workers", "", &|r| {
        format!("{:.0}", deep(r).claims_per_second)
    });
    let names: Vec<&str> = runs.iter().map(|r| r.backend).collect();
    format!(
        "## At {deepest} queued builds, against the goals\n\n| | {} | goal |\n| --- |{} --- |\n{rows}",
        names.join(" | "),
        " --- |".repeat(runs.len())
    )
}

fn table(run: &Run) -> String {
    let mut out = format!(
        "## {}\n\nMilliseconds, median / 99th percentile.\n\n\
         | queued builds | filled by (builds/s) | upload | read of one build | first page (builds on it) | last page | claim | claims/s |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        run.backend
    );
    for d in &run.depths {
        let _ = writeln!(
            out,
            "| {} | {} ({:.0}) | {} | {} | {} ({}) | {} | {} | {:.0} |",
            d.depth,
            d.filled_by,
            d.fill_per_second,
            spread(&d.upload),
            spread(&d.read),
            spread(&d.first_page),
            d.page_rows,
            spread(&d.last_page),
            spread(&d.claim),
            d.claims_per_second
        );
    }
    out
}

fn plans(run: &Run) -> String {
    let mut out = format!("### {}\n\n", run.backend);
    for (name, plan) in &run.plans {
        let _ = writeln!(out, "{name}:\n\n```\n{plan}\n```\n");
    }
    out
}

fn report(runs: &[Run]) -> String {
    let tables: Vec<String> = runs.iter().map(table).collect();
    let plans: Vec<String> = runs.iter().map(plans).collect();
    format!(
        "# The queue at depth\n\n\
         The API and two workers while builds wait, at each depth of the queue, on SQLite and \
         on PostgreSQL. Regenerate with `scripts/bench queue` (as root: it starts a throwaway \
         PostgreSQL).\n\n\
         Machine: {}, {} cores. One `kiln serve --workers 0` (release build) per database, \
         blobs in a local directory; PostgreSQL {} as `scripts/start-postgres` starts it \
         (on the same machine, `fsync` off), its planner statistics refreshed (`ANALYZE builds`) \
         after each fill as its autovacuum does within a minute; SQLite keeps none, and kiln \
         does not ask it to.\n\n\
         Ten owners, one application each, share the queue evenly; the server runs with \
         `--max-unfinished-builds 10000000` so that one owner may hold a tenth of it (an upload \
         counts its owner's unfinished builds, which the default limit keeps at 20). Up to {UPLOAD_FILL_LIMIT} \
         builds the queue is filled by uploads through the API; deeper, through the store's own \
         insert path (`MetaStore::create_build`, the statement an upload runs, without the \
         HTTP request and the archive's inspection), all those builds sharing one stored source. \
         At each depth {SAMPLES} requests of each kind are sent by {CLIENTS} clients at once: \
         uploads of `examples/add-header` (measured last, so the queue is up to {SAMPLES} \
         deeper then), reads of one build (`GET /version_build/{{id}}`), and the first and the \
         last page ({PAGE} builds, by keyset: `after=`) of one owner's queued builds \
         (`GET /version_build?state=queued`). Then two workers claim {CLAIMS} builds back to \
         back (`POST /internal/builds/claim`), from a queue topped up by as many first, so it \
         drains back to the depth while they claim.\n\n{}\n{}\n## Query plans\n\n\
         At the deepest queue, as each database planned the statements with sample values.\n\n{}",
        crate::sandbox::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        postgres_version(),
        goals(runs),
        tables.join("\n"),
        plans.join("\n")
    )
}

fn postgres_version() -> String {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok()?.file_name().into_string().ok())
                .max()
        })
        .unwrap_or_else(|| "?".into())
}
