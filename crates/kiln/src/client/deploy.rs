//! `kiln deploy`: pack, upload with a progress bar, follow the live log,
//! print the artifact, and with `--promote` point a channel at it. `--watch` does it again on every saved change.

use super::api::Api;
use super::channels::promote_version;
use super::{Conn, DeployArgs, output, pack, resolve_app};
use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Bytes per piece of an upload, for the progress bar.
const UPLOAD_PIECE: usize = 64 * 1024;
/// How often `--watch` looks at the files.
const WATCH_POLL: Duration = Duration::from_millis(700);

/// What `Cargo.toml` says about the project.
struct Manifest {
    name: Option<String>,
    version: Option<semver::Version>,
    phases: Option<Vec<String>>,
}

fn manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a Rust project: reading {}",
            dir.display(),
            path.display()
        )
    })?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let package = table.get("package");
    let name = package
        .and_then(|p| p.get("name"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let version = package
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(|v| {
            semver::Version::parse(v)
                .with_context(|| format!("the version in {} is not semver", path.display()))
        })
        .transpose()?;
    let phases = package
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("kiln"))
        .and_then(|k| k.get("phases"))
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        });
    Ok(Manifest {
        name,
        version,
        phases,
    })
}

pub async fn run(args: DeployArgs) -> Result<()> {
    let api = args.conn.api()?;
    let dir = args.dir.clone().unwrap_or_else(|| ".".into());
    let manifest = manifest(&dir)?;
    let app_ref = match (&args.app, &manifest.name) {
        (Some(app), _) => app.clone(),
        (None, Some(name)) => name.clone(),
        (None, None) => bail!("name the application with --app"),
    };
    let app = resolve_app(&api, &app_ref, true).await?;
    let app_id = output::text(&app["id"]);
    let mut version = match (&args.version, &manifest.version) {
        (Some(v), _) => {
            semver::Version::parse(v).map_err(|e| anyhow!("--version {v:?} is not semver: {e}"))?
        }
        (None, Some(v)) => v.clone(),
        (None, None) => bail!("Cargo.toml has no version: give --version"),
    };
    let phases = match (&args.phases, &manifest.phases) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if !p.is_empty() => p.clone(),
        _ => vec!["request_headers".into(), "response_headers".into()],
    };
    let conf = match &args.conf {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let upload = Upload {
        api: &api,
        conn: &args.conn,
        dir: &dir,
        app_id: &app_id,
        phases: &phases,
        conf: conf.as_deref(),
        notes: args.notes.as_deref(),
        promote: args.promote.as_deref(),
    };
    if !args.watch {
        return upload.once(&version, !args.no_wait).await.map(drop);
    }
    eprintln!("watching {} (ctrl-c to stop)", dir.display());
    loop {
        match upload.once(&version, true).await {
            Ok(_) => {}
            Err(e) => eprintln!("error: {e:#}"),
        }
        version.patch += 1;
        version.pre = semver::Prerelease::EMPTY;
        let seen = pack::fingerprint(&dir)?;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_POLL) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            if pack::fingerprint(&dir)? != seen {
                break;
            }
        }
        eprintln!("\nchanged; deploying {version}");
    }
}

struct Upload<'a> {
    api: &'a Api,
    conn: &'a Conn,
    dir: &'a Path,
    app_id: &'a str,
    phases: &'a [String],
    conf: Option<&'a str>,
    notes: Option<&'a str>,
    /// The channel to point at the version once it is built.
    promote: Option<&'a str>,
}

impl Upload<'_> {
    /// Uploads `version`; with `wait`, follows the build to its end and
    /// fails unless it succeeded. Returns the build (or version) JSON.
    async fn once(&self, version: &semver::Version, wait: bool) -> Result<Value> {
        let (archive, files) = pack::tar_gz(self.dir)?;
        let size = archive.len() as u64;
        eprintln!(
            "packed {files} files of {} ({})",
            self.dir.display(),
            output::size(size)
        );
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template(
                "uploading {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let pieces: Vec<bytes::Bytes> = archive
            .chunks(UPLOAD_PIECE)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let counter = bar.clone();
        let stream = futures::stream::iter(pieces.into_iter().map(move |piece| {
            counter.inc(piece.len() as u64);
            Ok::<_, std::io::Error>(piece)
        }));
        let part = Part::stream_with_length(reqwest::Body::wrap_stream(stream), size)
            .file_name("source.tar.gz")
            .mime_str("application/gzip")?;
        let phases = serde_json::to_string(self.phases)?;
        let mut form = Form::new()
            .text("plugin_id", self.app_id.to_owned())
            .text("version", version.to_string())
            .text("plugin_language", "rust")
            .text("phases", phases)
            .part("source_code", part);
        if let Some(conf) = self.conf {
            form = form.text("conf", conf.to_owned());
        }
        if let Some(notes) = self.notes {
            form = form.text("notes", notes.to_owned());
        }
        let sent = self
            .api
            .json(self.api.request(Method::POST, "/version").multipart(form))
            .await;
        bar.finish_and_clear();
        let build = sent?;
        let id = output::text(&build["id"]);
        eprintln!("uploaded {version}: build {id} queued");
        if !wait {
            if self.conn.json {
                output::json(&build);
            } else {
                println!("{id}");
            }
            return Ok(build);
        }
        let end = follow_to_end(self.api, &id).await?;
        let version = finish(self.api, self.conn, &id, &end).await?;
        if let Some(channel) = self.promote {
            let moved = promote_version(self.api, self.app_id, channel, &id).await?;
            eprintln!(
                "channel {} now serves {} (revision {})",
                output::text(&moved["name"]),
                output::text(&moved["version"]["version"]),
                output::text(&moved["revision"])
            );
        }
        Ok(version)
    }
}

/// Prints the log of build `id` on stderr as it arrives; returns the end.
pub async fn follow_to_end(api: &Api, id: &str) -> Result<Value> {
    let mut stderr = std::io::stderr();
    api.follow(id, |text| {
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    })
    .await
}

/// After the build: the version's id, size and sha256, or the failure.
pub async fn finish(api: &Api, conn: &Conn, id: &str, end: &Value) -> Result<Value> {
    let state = output::text(&end["state"]);
    if state != "succeeded" {
        if conn.json {
            output::json(&end["build"]);
        }
        let error = output::text(&end["error"]);
        bail!("build {id} {state}: {error}");
    }
    let version = api.get(&format!("/version/{id}")).await?;
    if conn.json {
        output::json(&version);
    } else {
        eprintln!();
        output::fields(&[
            ("version", output::text(&version["version"])),
            ("id", output::text(&version["id"])),
            (
                "size",
                output::size(version["binary_size"].as_u64().unwrap_or(0)),
            ),
            ("sha256", output::text(&version["binary_sha256"])),
        ]);
    }
    Ok(version)
}
