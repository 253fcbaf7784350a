//! `kiln token create | revoke | list`: owner, edge and worker tokens are written to and revoked
//! in the metadata store directly; servers read it on every request, so a
//! change holds from the next request without a restart.

use crate::cli::{ListArgs, RevokeArgs, TokenArgs};
use crate::serve::open_meta;
use anyhow::{Context, bail};
use kiln_domain::{AppId, OwnerId, WorkerName};
use kiln_server::auth::{hash_token, new_edge_token, new_owner_token, new_worker_token};
use kiln_store::{MetaStore, Orphaned, Revoked, StoreError};
use std::io::Read;
use std::path::Path;

pub async fn create(args: TokenArgs) -> anyhow::Result<()> {
    // Checked before the store is opened, so a typo creates nothing.
    let worker = args.worker.as_deref().map(WorkerName::parse).transpose()?;
    if let Some(owner) = args.owner {
        anyhow::ensure!(owner > 0, "--owner must be a positive owner id");
    }
    let app = args.app.as_deref().map(AppId::parse).transpose()?;
    let meta = open_meta(&args.store).await?;
    match (args.owner, worker) {
        (_, Some(worker)) => create_worker(&meta, &worker).await,
        (Some(owner), None) if args.edge => create_edge(&meta, OwnerId(owner), app).await,
        (Some(owner), None) => create_owner(&meta, OwnerId(owner)).await,
        (None, None) => bail!("give --owner ID or --worker NAME"),
    }
}

async fn create_edge(meta: &MetaStore, owner: OwnerId, app: Option<AppId>) -> anyhow::Result<()> {
    if !meta
        .owner_exists(owner)
        .await
        .context("reading the owner")?
    {
        bail!("there is no owner {}", owner.0);
    }
    if let Some(app) = app {
        match meta.get_application(owner, app).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => bail!("owner {} has no application {app}", owner.0),
            Err(e) => return Err(e).context("reading the application"),
        }
    }
    let token = new_edge_token();
    meta.add_edge_token(owner, app, &hash_token(&token))
        .await
        .context("storing the edge token")?;
    match app {
        Some(app) => eprintln!(
            "created an edge token of owner {} for application {app} (it reads only its \
             channels and artifacts); it is shown once:",
            owner.0
        ),
        None => eprintln!(
            "created an edge token of owner {} (it reads only channels and artifacts); \
             it is shown once:",
            owner.0
        ),
    }
    println!("{token}");
    Ok(())
}

async fn create_owner(meta: &MetaStore, owner: OwnerId) -> anyhow::Result<()> {
    meta.ensure_owner(owner, &format!("owner {}", owner.0))
        .await
        .context("creating the owner")?;
    let token = new_owner_token();
    meta.add_token(owner, &hash_token(&token))
        .await
        .context("storing the token")?;
    eprintln!("created a token for owner {}; it is shown once:", owner.0);
    println!("{token}");
    Ok(())
}

async fn create_worker(meta: &MetaStore, worker: &WorkerName) -> anyhow::Result<()> {
    let token = new_worker_token();
    match meta.create_worker(worker, &hash_token(&token)).await {
        Ok(()) => {}
        Err(StoreError::Conflict(message)) => bail!("{message}"),
        Err(e) => return Err(e).context("storing the worker token"),
    }
    eprintln!("created the token of worker {worker}; it is shown once:");
    println!("{token}");
    Ok(())
}

/// Why the shared token cannot be revoked here.
fn shared_token_is_configuration(data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "that is the server's shared worker token (the worker named {}), which comes from \
         kiln serve's --worker-token or {}, not from the store: give kiln serve another \
         --worker-token (or delete that file) and restart it",
        WorkerName::SHARED,
        data_dir.join("worker.token").display()
    )
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let max_attempts = args.max_attempts;
    let data_dir = args.store.data_dir.clone();
    let revoked = match (&args.worker, &args.token) {
        (Some(name), _) => {
            let worker = WorkerName::parse(name)?;
            if worker.is_shared() {
                return Err(shared_token_is_configuration(&data_dir));
            }
            let meta = open_meta(&args.store).await?;
            match meta.revoke_worker(&worker, max_attempts).await {
                Ok(orphaned) => Revoked::Worker(worker, orphaned),
                Err(StoreError::NotFound) => {
                    bail!("there is no worker named {worker} (`kiln token list` shows them)")
                }
                Err(StoreError::Conflict(message)) => bail!("{message}"),
                Err(e) => return Err(e).context("revoking the worker token"),
            }
        }
        (None, Some(token)) => {
            let token = read_token(token)?;
            if is_shared_token(&data_dir, &token) {
                return Err(shared_token_is_configuration(&data_dir));
            }
            let meta = open_meta(&args.store).await?;
            match meta.revoke_token(&hash_token(&token), max_attempts).await {
                Ok(revoked) => revoked,
                Err(StoreError::NotFound) => {
                    bail!("no live token matches: it is unknown, or was revoked already")
                }
                Err(StoreError::Conflict(message)) => bail!("{message}"),
                Err(e) => return Err(e).context("revoking the token"),
            }
        }
        (None, None) => bail!("give the TOKEN to revoke, or --worker NAME"),
    };
    match revoked {
        Revoked::Owner(owner) => println!(
            "revoked a token of owner {}; it is refused from the next request",
            owner.0
        ),
        Revoked::Edge(owner) => println!(
            "revoked an edge token of owner {}; it is refused from the next request",
            owner.0
        ),
        Revoked::Worker(worker, Orphaned { requeued, crashed }) => println!(
            "revoked the token of worker {worker}; it is refused from the next request; \
             of its running builds, {requeued} were queued again and {crashed} ended crashed"
        ),
    }
    Ok(())
}

/// The token argument, or stdin's first line for `-` (so the token need
/// not appear in the shell history or the process list).
fn read_token(arg: &str) -> anyhow::Result<String> {
    let token = if arg == "-" {
        let mut input = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut input)
            .context("reading the token from stdin")?;
        input.lines().next().unwrap_or_default().trim().to_owned()
    } else {
        arg.trim().to_owned()
    };
    anyhow::ensure!(!token.is_empty(), "the token to revoke is empty");
    Ok(token)
}

fn is_shared_token(data_dir: &Path, token: &str) -> bool {
    let from_flag = std::env::var("KILN_WORKER_TOKEN").ok();
    let from_file = std::fs::read_to_string(data_dir.join("worker.token")).ok();
    [from_flag, from_file]
        .into_iter()
        .flatten()
        .any(|shared| shared.trim() == token)
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let meta = open_meta(&args.store).await?;
    let workers = meta.list_workers().await.context("listing the workers")?;
    let owners = meta
        .owner_token_counts()
        .await
        .context("counting the owners' tokens")?;
    println!("{:<32} {:<20} revoked", "worker", "created");
    for w in &workers {
        let revoked = w
            .revoked
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:<20} {revoked}",
            w.name.as_str(),
            w.created.format("%Y-%m-%d %H:%M:%S").to_string()
        );
    }
    println!(
        "(and {}: the server's shared --worker-token, kept in its configuration)",
        WorkerName::SHARED
    );
    let edge = meta
        .edge_token_counts()
        .await
        .context("counting the edge tokens")?;
    let edge_of = |owner: OwnerId| {
        edge.iter()
            .find(|(o, _)| *o == owner)
            .map_or(0, |(_, n)| *n)
    };
    let mut ids: Vec<OwnerId> = owners.iter().chain(&edge).map(|(o, _)| *o).collect();
    ids.sort();
    ids.dedup();
    println!();
    println!("{:<32} {:<8} edge tokens", "owner", "tokens");
    for owner in ids {
        let count = owners
            .iter()
            .find(|(o, _)| *o == owner)
            .map_or(0, |(_, n)| *n);
        println!("{:<32} {count:<8} {}", owner.0, edge_of(owner));
    }
    Ok(())
}
