//! The client commands of `kiln`, for people and scripts: log in, start a
//! project, manage applications, deploy with the live log, look at builds
//! and versions, download binaries. Each talks to a kiln server over its
//! public API with an owner token.
//!
//! Layout:
//! - [`api`]: HTTP, refusals as one sentence, the live log (SSE).
//! - [`config`]: `kiln login`'s file.
//! - [`init`]: project templates.
//! - [`pack`]: the `.tar.gz` of a project.
//! - [`deploy`]: upload, follow, report.
//! - [`channels`]: promote, roll back, list channels.
//! - [`output`]: tables and JSON.

pub mod api;
pub mod channels;
pub mod config;
pub mod deploy;
pub mod init;
pub mod output;
pub mod pack;

use anyhow::{Context, Result, anyhow, bail};
use api::Api;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

/// Which server, as whom, and how to print.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The kiln server (default: what `kiln login` stored, else http://127.0.0.1:8080).
    #[arg(long, env = "KILN_SERVER")]
    pub server: Option<String>,
    /// An owner token (default: what `kiln login` stored).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    pub fn server(&self, stored: &config::Stored) -> String {
        self.server
            .clone()
            .or_else(|| stored.server.clone())
            .unwrap_or_else(|| config::DEFAULT_SERVER.to_owned())
    }

    pub fn api(&self) -> Result<Api> {
        let stored = config::load()?;
        let token = self
            .token
            .clone()
            .or_else(|| stored.token.clone())
            .ok_or_else(|| anyhow!("no token: pass --token, set KILN_TOKEN or run `kiln login`"))?;
        Api::new(&self.server(&stored), &token)
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Stores a server and token for the other commands (in the user's config directory, mode 0600).
    Login(LoginArgs),
    /// Forgets what `kiln login` stored.
    Logout,
    /// Creates a new filter project that builds as it is.
    Init(InitArgs),
    /// Creates, lists, shows, renames and deletes applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Packs a project, uploads it and follows its build to the end.
    Deploy(DeployArgs),
    /// Lists builds, newest first.
    Builds(BuildsArgs),
    /// Shows one build.
    #[command(subcommand)]
    Build(BuildCommand),
    /// Prints a build's log; --follow streams it until the build ends.
    Logs(LogsArgs),
    /// Cancels a queued or running build.
    Cancel(IdArgs),
    /// Lists an application's versions.
    Versions(VersionsArgs),
    /// Shows, edits and deletes versions.
    #[command(subcommand)]
    Version(VersionCommand),
    /// Downloads a version's binary and checks its sha256.
    Download(DownloadArgs),
    /// Points a channel at a succeeded version: deploys it.
    Promote(PromoteArgs),
    /// Returns a channel to the version it pointed at before its latest change.
    Rollback(RollbackArgs),
    /// Lists an application's channels and the versions they serve.
    Channels(ChannelsArgs),
    /// Prints shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The project's directory (its name becomes the crate's).
    pub name: Option<PathBuf>,
    /// The template.
    #[arg(long, default_value = "headers")]
    pub template: String,
    /// Lists the templates.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Creates an application.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        notes: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Lists the caller's applications.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Shows an application and its versions.
    Show {
        /// Its name or id.
        app: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Renames an application.
    Rename {
        app: String,
        new_name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deletes an application with its versions, builds and blobs.
    Delete {
        app: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The project directory (default: the current one).
    pub dir: Option<PathBuf>,
    /// The application, by name or id; created if no application has that name (default: the crate's name).
    #[arg(long)]
    pub app: Option<String>,
    /// The version (default: Cargo.toml's).
    #[arg(long)]
    pub version: Option<String>,
    /// Phases the filter handles, comma-separated (default: Cargo.toml's [package.metadata.kiln] phases, else request_headers,response_headers).
    #[arg(long, value_delimiter = ',')]
    pub phases: Option<Vec<String>>,
    /// A file with the plugin configuration.
    #[arg(long)]
    pub conf: Option<PathBuf>,
    #[arg(long)]
    pub notes: Option<String>,
    /// Print the build id once it is queued, and do not follow it.
    #[arg(long, conflicts_with = "watch")]
    pub no_wait: bool,
    /// Deploy again on every saved change, a patch version up each time.
    #[arg(long)]
    pub watch: bool,
    /// Once the build succeeds, point this channel at the new version (e.g. production).
    #[arg(long, value_name = "CHANNEL", conflicts_with = "no_wait")]
    pub promote: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The version: its id, or its number (e.g. 1.2.0) with --app.
    pub version: String,
    /// The channel to point at it (created on its first promotion).
    #[arg(long)]
    pub channel: String,
    /// The application (name or id), when VERSION is a number.
    #[arg(long)]
    pub app: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The application (name or id).
    #[arg(long)]
    pub app: String,
    /// The channel to roll back.
    #[arg(long)]
    pub channel: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct ChannelsArgs {
    /// The application (name or id).
    #[arg(long)]
    pub app: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct BuildsArgs {
    /// Only this application's (name or id).
    #[arg(long)]
    pub app: Option<String>,
    /// Only builds in this state.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Shows one build: state, times, error, stage timings.
    Show(IdArgs),
}

#[derive(Debug, Args)]
pub struct IdArgs {
    pub id: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub id: String,
    /// Stream the log until the build ends; exits non-zero unless it succeeded.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The application (name or id).
    #[arg(long)]
    pub app: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Shows one version.
    Show(IdArgs),
    /// Changes a version's number, phases, configuration or notes.
    Edit {
        id: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long, value_delimiter = ',')]
        phases: Option<Vec<String>>,
        /// A file with the new plugin configuration.
        #[arg(long)]
        conf: Option<PathBuf>,
        #[arg(long)]
        notes: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deletes a version with its build and blobs.
    Delete {
        id: String,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Wasm,
    Cwasm,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The version id.
    pub version: String,
    /// Where to write it (default: plugin-ID.wasm or .cwasm; `-` for stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "wasm")]
    pub format: Format,
    /// For a .cwasm: the target triple it was precompiled for.
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Login(args) => login(args).await,
        ClientCommand::Logout => {
            if config::remove()? {
                eprintln!("logged out");
            }
            Ok(())
        }
        ClientCommand::Init(args) => init_project(args),
        ClientCommand::App(command) => app(command).await,
        ClientCommand::Deploy(args) => deploy::run(args).await,
        ClientCommand::Builds(args) => builds(args).await,
        ClientCommand::Build(BuildCommand::Show(args)) => build_show(args).await,
        ClientCommand::Logs(args) => logs(args).await,
        ClientCommand::Cancel(args) => {
            let api = args.conn.api()?;
            let build = api
                .json(api.request(Method::POST, &format!("/version_build/{}/cancel", args.id)))
                .await?;
            show_build(&args.conn, &build);
            Ok(())
        }
        ClientCommand::Versions(args) => versions(args).await,
        ClientCommand::Version(command) => version(command).await,
        ClientCommand::Download(args) => download(args).await,
        ClientCommand::Promote(args) => channels::promote(args).await,
        ClientCommand::Rollback(args) => channels::rollback(args).await,
        ClientCommand::Channels(args) => channels::channels(args).await,
        ClientCommand::Completions { shell } => {
            let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "kiln", &mut std::io::stdout());
            Ok(())
        }
    }
}

async fn login(args: LoginArgs) -> Result<()> {
    let mut stored = config::load()?;
    let server = args.conn.server(&stored);
    let token = match args.conn.token.clone() {
        Some(token) => token,
        None => {
            eprint!("token for {server}: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    if token.is_empty() {
        bail!("no token given");
    }
    // Checked before it is stored.
    let apps = Api::new(&server, &token)?.get("/application").await?;
    stored.server = Some(server.clone());
    stored.token = Some(token);
    let path = config::save(&stored)?;
    let count = apps.as_array().map_or(0, Vec::len);
    eprintln!(
        "logged in to {server} ({count} applications); saved in {}",
        path.display()
    );
    Ok(())
}

fn init_project(args: InitArgs) -> Result<()> {
    if args.list || args.name.is_none() {
        let rows: Vec<Vec<String>> = init::TEMPLATES
            .iter()
            .map(|t| vec![t.name.to_owned(), t.phases.join(","), t.about.to_owned()])
            .collect();
        output::table(&["TEMPLATE", "PHASES", "WHAT IT DOES"], &rows);
        if args.name.is_none() && !args.list {
            bail!("name the project: kiln init NAME [--template TEMPLATE]");
        }
        return Ok(());
    }
    let dir = args.name.expect("checked above");
    let template = init::template(&args.template)?;
    let name = init::create(&dir, template)?;
    println!(
        "created {} ({} template): Cargo.toml, src/lib.rs, README.md, .gitignore",
        dir.display(),
        template.name
    );
    println!("next: kiln deploy {} --app {name}", dir.display());
    Ok(())
}

/// The application named or with id `app_ref`; with `create`, a missing
/// name is created.
pub async fn resolve_app(api: &Api, app_ref: &str, create: bool) -> Result<Value> {
    if uuid_like(app_ref) {
        return api.get(&format!("/application/{app_ref}")).await;
    }
    let apps = api.get("/application").await?;
    if let Some(app) = apps
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"].as_str() == Some(app_ref))
    {
        return Ok(app.clone());
    }
    if !create {
        bail!("no application named {app_ref:?} (kiln app list shows them)");
    }
    let app = api
        .json(
            api.request(Method::POST, "/application")
                .json(&json!({"name": app_ref, "notes": ""})),
        )
        .await?;
    eprintln!(
        "created application {app_ref} ({})",
        output::text(&app["id"])
    );
    Ok(app)
}

pub(crate) fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn confirm(what: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    eprint!("delete {what}? type yes: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not deleted");
    }
    Ok(())
}

async fn app(command: AppCommand) -> Result<()> {
    match command {
        AppCommand::Create { name, notes, conn } => {
            let api = conn.api()?;
            let app = api
                .json(
                    api.request(Method::POST, "/application")
                        .json(&json!({"name": name, "notes": notes})),
                )
                .await?;
            show_app(&conn, &app);
        }
        AppCommand::List { conn } => {
            let apps = conn.api()?.get("/application").await?;
            if conn.json {
                output::json(&apps);
            } else {
                let rows: Vec<Vec<String>> = list(&apps)
                    .map(|a| {
                        vec![
                            output::text(&a["id"]),
                            output::text(&a["name"]),
                            output::time(&a["created"]),
                            output::text(&a["notes"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "CREATED", "NOTES"], &rows);
            }
        }
        AppCommand::Show { app, conn } => {
            let api = conn.api()?;
            let app = resolve_app(&api, &app, false).await?;
            let id = output::text(&app["id"]);
            let versions = api.get(&format!("/version?application_id={id}")).await?;
            if conn.json {
                output::json(&json!({"application": app, "versions": versions}));
            } else {
                show_app(&conn, &app);
                println!();
                print_versions(&versions);
            }
        }
        AppCommand::Rename {
            app,
            new_name,
            conn,
        } => {
            let api = conn.api()?;
            let found = resolve_app(&api, &app, false).await?;
            let id = output::text(&found["id"]);
            let patch = json!({"name": new_name, "notes": found["notes"]});
            let app = api
                .json(
                    api.request(Method::PATCH, &format!("/application/{id}"))
                        .json(&patch),
                )
                .await?;
            show_app(&conn, &app);
        }
        AppCommand::Delete { app, yes, conn } => {
            let api = conn.api()?;
            let found = resolve_app(&api, &app, false).await?;
            let id = output::text(&found["id"]);
            confirm(
                &format!(
                    "application {} and all its versions",
                    output::text(&found["name"])
                ),
                yes,
            )?;
            api.send(api.request(Method::DELETE, &format!("/application/{id}")))
                .await?;
            eprintln!("deleted application {id}");
        }
    }
    Ok(())
}

pub(crate) fn list(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn show_app(conn: &Conn, app: &Value) {
    if conn.json {
        return output::json(app);
    }
    output::fields(&[
        ("id", output::text(&app["id"])),
        ("name", output::text(&app["name"])),
        ("notes", output::text(&app["notes"])),
        ("created", output::time(&app["created"])),
    ]);
}

async fn builds(args: BuildsArgs) -> Result<()> {
    let api = args.conn.api()?;
    let mut path = format!("/version_build?limit={}", args.limit);
    if let Some(app) = &args.app {
        let app = resolve_app(&api, app, false).await?;
        path.push_str(&format!("&application_id={}", output::text(&app["id"])));
    }
    if let Some(state) = &args.state {
        path.push_str(&format!("&state={state}"));
    }
    let builds = api.get(&path).await?;
    if args.conn.json {
        output::json(&builds);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list(&builds)
        .map(|b| {
            vec![
                output::text(&b["id"]),
                output::text(&b["version"]),
                output::text(&b["state"]),
                output::time(&b["created"]),
                duration(b),
                output::text(&b["error"]),
            ]
        })
        .collect();
    output::table(
        &["ID", "VERSION", "STATE", "CREATED", "TOOK", "ERROR"],
        &rows,
    );
    Ok(())
}

/// How long a build ran, from its start and end times.
fn duration(build: &Value) -> String {
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse(&build["started"]), parse(&build["finished"])) {
        (Some(start), Some(end)) if end >= start => {
            format!("{:.1}s", (end - start).num_milliseconds() as f64 / 1000.0)
        }
        _ => "-".to_owned(),
    }
}

async fn build_show(args: IdArgs) -> Result<()> {
    let build = args
        .conn
        .api()?
        .get(&format!("/version_build/{}", args.id))
        .await?;
    show_build(&args.conn, &build);
    Ok(())
}

fn show_build(conn: &Conn, build: &Value) {
    if conn.json {
        return output::json(build);
    }
    let mut pairs = vec![
        ("id", output::text(&build["id"])),
        ("application", output::text(&build["application_id"])),
        ("version", output::text(&build["version"])),
        ("state", output::text(&build["state"])),
        ("attempt", output::text(&build["attempt"])),
        ("worker", output::text(&build["worker"])),
        ("created", output::time(&build["created"])),
        ("started", output::time(&build["started"])),
        ("finished", output::time(&build["finished"])),
        ("took", duration(build)),
        ("phases", output::text(&build["phases"])),
    ];
    if !build["error"].is_null() {
        pairs.push(("error", output::text(&build["error"])));
    }
    if let Some(stages) = build["profile"]["stages_ms"].as_object() {
        let text: Vec<String> = stages.iter().map(|(k, v)| format!("{k} {v} ms")).collect();
        pairs.push(("stages", text.join(", ")));
    }
    output::fields(&pairs);
}

async fn logs(args: LogsArgs) -> Result<()> {
    let api = args.conn.api()?;
    let mut stdout = std::io::stdout();
    if !args.follow {
        let response = api
            .send(api.request(Method::GET, &format!("/version_build/{}/logs", args.id)))
            .await?;
        let bytes = response.bytes().await?;
        stdout.write_all(&bytes)?;
        return Ok(());
    }
    let end = api
        .follow(&args.id, |text| {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        })
        .await?;
    let state = output::text(&end["state"]);
    if args.conn.json {
        output::json(&end["build"]);
    } else {
        eprintln!("build {} {state}", args.id);
    }
    if state != "succeeded" {
        bail!("build {} {state}: {}", args.id, output::text(&end["error"]));
    }
    Ok(())
}

async fn versions(args: VersionsArgs) -> Result<()> {
    let api = args.conn.api()?;
    let app = resolve_app(&api, &args.app, false).await?;
    let versions = api
        .get(&format!(
            "/version?application_id={}",
            output::text(&app["id"])
        ))
        .await?;
    if args.conn.json {
        output::json(&versions);
    } else {
        print_versions(&versions);
    }
    Ok(())
}

fn print_versions(versions: &Value) {
    let rows: Vec<Vec<String>> = list(versions)
        .map(|v| {
            vec![
                output::text(&v["id"]),
                output::text(&v["version"]),
                output::time(&v["created"]),
                output::size(v["binary_size"].as_u64().unwrap_or(0)),
                output::text(&v["binary_sha256"]),
            ]
        })
        .collect();
    output::table(&["ID", "VERSION", "CREATED", "SIZE", "SHA256"], &rows);
}

async fn version(command: VersionCommand) -> Result<()> {
    match command {
        VersionCommand::Show(args) => {
            let version = args
                .conn
                .api()?
                .get(&format!("/version/{}", args.id))
                .await?;
            show_version(&args.conn, &version);
        }
        VersionCommand::Edit {
            id,
            version,
            phases,
            conf,
            notes,
            conn,
        } => {
            let api = conn.api()?;
            let mut patch = serde_json::Map::new();
            if let Some(v) = version {
                patch.insert("version".into(), json!(v));
            }
            if let Some(p) = phases {
                patch.insert("phases".into(), json!(p));
            }
            if let Some(path) = conf {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                patch.insert("conf".into(), json!(text));
            }
            if let Some(n) = notes {
                patch.insert("notes".into(), json!(n));
            }
            if patch.is_empty() {
                bail!("nothing to change: give --version, --phases, --conf or --notes");
            }
            let version = api
                .json(
                    api.request(Method::PATCH, &format!("/version/{id}"))
                        .json(&Value::Object(patch)),
                )
                .await?;
            show_version(&conn, &version);
        }
        VersionCommand::Delete { id, yes, conn } => {
            let api = conn.api()?;
            confirm(&format!("version {id}"), yes)?;
            api.send(api.request(Method::DELETE, &format!("/version/{id}")))
                .await?;
            eprintln!("deleted version {id}");
        }
    }
    Ok(())
}

fn show_version(conn: &Conn, version: &Value) {
    if conn.json {
        return output::json(version);
    }
    let mut pairs = vec![
        ("id", output::text(&version["id"])),
        ("application", output::text(&version["application_id"])),
        ("version", output::text(&version["version"])),
        ("phases", output::text(&version["phases"])),
        ("created", output::time(&version["created"])),
        (
            "size",
            output::size(version["binary_size"].as_u64().unwrap_or(0)),
        ),
        ("sha256", output::text(&version["binary_sha256"])),
        ("notes", output::text(&version["notes"])),
    ];
    if let Some(startup) = version["profile"]["startup"].as_object() {
        let text: Vec<String> = startup.iter().map(|(k, v)| format!("{k} {v}")).collect();
        pairs.push(("startup", text.join(", ")));
    }
    output::fields(&pairs);
}

async fn download(args: DownloadArgs) -> Result<()> {
    let api = args.conn.api()?;
    let id = &args.version;
    let (path, extension) = match args.format {
        Format::Wasm => (format!("/version/{id}/binary"), "wasm"),
        Format::Cwasm => {
            let target = args
                .target
                .as_deref()
                .context("--format cwasm needs --target TRIPLE")?;
            (
                format!("/version/{id}/binary?format=cwasm&target={target}"),
                "cwasm",
            )
        }
    };
    let response = api.send(api.request(Method::GET, &path)).await?;
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let bytes = response.bytes().await?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    // The .wasm's sha256 is its ETag and the version's record; a .cwasm
    // carries its own signature, which `kiln try --verify-key` checks.
    if let Some(expected) = etag
        .as_deref()
        .filter(|_| matches!(args.format, Format::Wasm))
    {
        if expected != sha256 {
            bail!("the download's sha256 is {sha256}, not {expected}: not written");
        }
        let version = api.get(&format!("/version/{id}")).await?;
        if version["binary_sha256"].as_str() != Some(&sha256) {
            bail!("the download's sha256 is {sha256}, not the version's: not written");
        }
    }
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("plugin-{id}.{extension}")));
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(&bytes)?;
    } else {
        std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.conn.json {
        output::json(&json!({"file": out, "size": bytes.len(), "sha256": sha256}));
    } else {
        eprintln!(
            "{} ({}) sha256 {sha256}",
            out.display(),
            output::size(bytes.len() as u64)
        );
    }
    Ok(())
}
