//! `kiln serve`: opens the stores, issues the first tokens on a fresh data
//! dir, and serves until SIGTERM or Ctrl-C.

use crate::builders;
use crate::cli::{BlobArgs, ServeArgs, StoreArgs};
use anyhow::{Context, bail};
use kiln_server::artifacts::{self, Precompiler};
use kiln_server::auth::{hash_token, new_owner_token, new_worker_token};
use kiln_server::{AppState, Server, ServerConfig};
use kiln_store::{BlobStore, MetaStore, S3Config};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn open_meta(args: &StoreArgs) -> anyhow::Result<MetaStore> {
    create_private_dir(&args.data_dir)?;
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", args.data_dir.join("kiln.db").display()),
    };
    MetaStore::connect(&url)
        .await
        .with_context(|| format!("opening the metadata store ({})", redact_url(&url)))
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting the data dir {}", dir.display()))
}

pub fn open_blobs(store: &StoreArgs, args: &BlobArgs) -> anyhow::Result<BlobStore> {
    let default = format!("file://{}", store.data_dir.join("blobs").display());
    let url = args.blob_store.clone().unwrap_or(default);
    if let Some(dir) = url.strip_prefix("file://") {
        return BlobStore::local(Path::new(dir))
            .with_context(|| format!("opening the blob store {url}"));
    }
    if let Some(bucket) = url.strip_prefix("s3://") {
        let bucket = bucket.trim_end_matches('/');
        if bucket.is_empty() || bucket.contains('/') {
            bail!("--blob-store s3://BUCKET takes a bucket name only (got {url:?})");
        }
        let config = S3Config {
            bucket: bucket.to_owned(),
            endpoint: args.s3_endpoint.clone(),
            region: args.s3_region.clone(),
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
        };
        return BlobStore::s3(&config).with_context(|| format!("opening the blob store {url}"));
    }
    bail!("--blob-store must be file://DIR or s3://BUCKET (got {url:?})")
}

/// Writes a secret to a new file readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))
}

/// On the first start, creates owner 1 with a token in `admin.token`.
async fn bootstrap_admin(meta: &MetaStore, data_dir: &Path) -> anyhow::Result<()> {
    if meta.owner_count().await? > 0 {
        return Ok(());
    }
    let owner = meta
        .create_owner("admin")
        .await
        .context("creating the first owner")?;
    let token = new_owner_token();
    let path = data_dir.join("admin.token");
    let _ = std::fs::remove_file(&path);
    write_secret(&path, &token)?;
    meta.add_token(owner, &hash_token(&token))
        .await
        .context("storing the admin token")?;
    tracing::info!(owner = owner.0, path = %path.display(), "created the first owner; its token is in this file");
    Ok(())
}

/// The worker token: the flag, else `worker.token` in the data dir,
/// generated on first start.
fn worker_token(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(token) = &args.worker_token {
        anyhow::ensure!(
            token.len() >= 16,
            "--worker-token must be at least 16 characters"
        );
        return Ok(token.clone());
    }
    let path = args.store.data_dir.join("worker.token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Ok(_) | Err(_) => {
            let token = new_worker_token();
            let _ = std::fs::remove_file(&path);
            write_secret(&path, &token)?;
            tracing::info!(path = %path.display(), "created the worker token");
            Ok(token)
        }
    }
}

/// The server's precompilation: its signing key (`--signing-key`, or
/// created in the data dir) and the targets it compiles for.
fn precompiler(args: &ServeArgs) -> anyhow::Result<Precompiler> {
    let key = match &args.signing_key {
        Some(path) => artifacts::signing_key(path, false).context("--signing-key")?,
        None => artifacts::signing_key(&args.store.data_dir.join("signing.key"), true)?,
    };
    Precompiler::new(&args.precompile_targets, key).context("--precompile-target")
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let meta = open_meta(&args.store).await?;
    let blobs = open_blobs(&args.store, &args.blobs)?;
    bootstrap_admin(&meta, &args.store.data_dir).await?;
    let worker_token = worker_token(&args)?;

    let workers = args.workers.unwrap_or_else(builders::default_count);
    // Checked before serving: a node that should build but cannot sandbox
    // refuses to start.
    let pipeline = match workers {
        0 => None,
        _ => Some(builders::pipeline(&args.build, args.max_upload_mib)?),
    };

    let mut config = ServerConfig::new(hash_token(&worker_token));
    config.archive_limits = builders::archive_limits(&args.build, args.max_upload_mib);
    config.lease = Duration::from_secs(args.lease_seconds);
    config.max_attempts = args.max_attempts;
    config.max_unfinished_builds = args.max_unfinished_builds;
    config.reap_interval = Duration::from_secs(args.reap_interval_seconds);
    let artifacts = precompiler(&args)?;
    let mut state = AppState::new(meta.clone(), blobs.clone(), config, artifacts);
    state.trials = std::sync::Arc::new(builders::trial_host(&args.build));
    let trials = state.trials.isolation();

    let server = Server::bind(args.listen, state)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = server.local_addr()?;
    // The first line on stdout, for scripts and tests that bind port 0.
    println!("listening on {addr}");
    tracing::info!(%addr, database = meta.backend_name(), blobs = blobs.describe(), trials, "kiln is serving");

    // On a signal, builders stop first (their reports still need the
    // server), then the server drains.
    let stop = CancellationToken::new();
    let builders = pipeline.map(|pipeline| {
        let url = format!("http://{}", loopback(addr));
        let grace = Duration::from_secs(args.build.grace_seconds);
        let stop = stop.clone();
        tokio::spawn(async move {
            builders::run(pipeline, &url, &worker_token, workers, stop, grace).await
        })
    });
    let shutdown = async move {
        shutdown_signal().await;
        stop.cancel();
        if let Some(builders) = builders {
            let _ = builders.await;
        }
    };
    server.run(shutdown).await.context("serving HTTP")?;
    meta.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The address builders in this process use to reach the server.
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(%e, "cannot listen for SIGTERM; only Ctrl-C stops kiln");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
