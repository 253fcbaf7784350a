//! Command-line flags. Every flag also reads a `KILN_*` variable.

use crate::build_args::BuildArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Builds untrusted source into proxy-wasm plugins, in a sandbox."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        env = "KILN_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the API server (and builders, unless --workers 0).
    Serve(Box<ServeArgs>),
    /// Runs builders on this host against a kiln server.
    Worker(WorkerArgs),
    /// Runs a plugin on one request in kiln's proxy-wasm host.
    Try(TryArgs),
    /// Manages owner, edge and worker tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The client commands (login, init, app, deploy, builds, logs, …).
    #[command(flatten)]
    Client(crate::client::ClientCommand),
    /// Keeps a local Envoy's wasm filter at a channel's version (an agent beside Envoy).
    Edge(EdgeArgs),
    /// Checks the metadata and blob stores against each other: rows naming missing blobs, blobs no row owns.
    Fsck(FsckArgs),
    /// Runs one job on a customer's module handed over by kiln (inside its sandbox).
    #[command(hide = true)]
    WasmChild {
        /// The directory holding the job and its modules.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token for an owner (created if missing), an edge server or a new worker, and prints it on the last line.
    Create(TokenArgs),
    /// Revokes a token at once: an owner's or a worker's (whose running builds are queued again).
    Revoke(RevokeArgs),
    /// Lists the workers' tokens and how many tokens each owner has.
    List(ListArgs),
}

/// Where blobs live.
#[derive(Debug, Args)]
pub struct BlobArgs {
    /// `file://DIR` (default: the data dir's `blobs/`) or `s3://BUCKET`.
    #[arg(long, env = "KILN_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// S3 endpoint for an S3-compatible server, e.g. http://127.0.0.1:8333 (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "KILN_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "KILN_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
}

/// `kiln fsck`: the stores checked against each other.
#[derive(Debug, Args)]
pub struct FsckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// Also remove the blobs no row owns (older than --grace-minutes).
    #[arg(long)]
    pub repair: bool,
    /// Blobs younger than this may belong to an upload or report in flight.
    #[arg(long, default_value_t = 60)]
    pub grace_minutes: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where metadata lives.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory for the embedded database, blobs and the generated tokens.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./.kiln")]
    pub data_dir: PathBuf,
    /// `postgres://…` to keep metadata in PostgreSQL; default: SQLite in the data dir.
    #[arg(long, env = "KILN_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("holder").required(true).args(["owner", "worker"])))]
pub struct TokenArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The owner (tenant) id the token acts for.
    #[arg(long, env = "KILN_OWNER")]
    pub owner: Option<i64>,
    /// The name of a new worker (build host) the token identifies, e.g. build-host-1.
    #[arg(long)]
    pub worker: Option<String>,
    /// A read-only token of an edge server: it reads only the owner's channels and artifacts.
    #[arg(long, requires = "owner", conflicts_with = "worker")]
    pub edge: bool,
    /// With --edge: only this application's channels and artifacts.
    #[arg(long, requires = "edge")]
    pub app: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["token", "worker"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The token to revoke, an owner's or a worker's; `-` reads it from stdin.
    pub token: Option<String>,
    /// Revoke the token of the worker with this name instead.
    #[arg(long)]
    pub worker: Option<String>,
    /// Starts of a build before a crash is final, as the server's --max-attempts: a
    /// revoked worker's running build that has used them ends crashed instead of queued.
    #[arg(long, env = "KILN_MAX_ATTEMPTS", default_value_t = 3,
        value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts: i32,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// Largest accepted source upload, in MiB.
    #[arg(long, env = "KILN_MAX_UPLOAD_MIB", default_value_t = 20)]
    pub max_upload_mib: u64,
    /// The shared worker token (the worker named `default`, used by the builders in this
    /// process); default: generated into DATA_DIR/worker.token. Other workers get their own
    /// with `kiln token create --worker NAME`.
    #[arg(long, env = "KILN_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Seconds a claimed build stays leased without a heartbeat (at least 3: workers beat every third of it).
    #[arg(long, env = "KILN_LEASE_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_seconds: u64,
    /// Times a build is started before a crash is final.
    #[arg(long, env = "KILN_MAX_ATTEMPTS", default_value_t = 3,
        value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts: i32,
    /// Builds one owner may have queued or running; more uploads get 429.
    #[arg(long, env = "KILN_MAX_UNFINISHED_BUILDS", default_value_t = 20,
        value_parser = clap::value_parser!(i64).range(1..))]
    pub max_unfinished_builds: i64,
    /// Seconds between looks for builds whose lease expired.
    #[arg(long, env = "KILN_REAP_INTERVAL_SECONDS", default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub reap_interval_seconds: u64,
    /// Builders run in this process; 0 makes an API-only node. Default: one per two cores.
    #[arg(long, env = "KILN_WORKERS")]
    pub workers: Option<usize>,
    /// Also precompile .cwasm artifacts for these target triples (e.g. aarch64-unknown-linux-gnu), besides this host's.
    #[arg(
        long = "precompile-target",
        env = "KILN_PRECOMPILE_TARGETS",
        value_delimiter = ','
    )]
    pub precompile_targets: Vec<String>,
    /// The Ed25519 key that signs every .cwasm (a 32-byte seed in hex); default: created in DATA_DIR/signing.key. Servers sharing a database must share it.
    #[arg(long, env = "KILN_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The kiln server, e.g. http://10.0.0.5:8080.
    #[arg(long, env = "KILN_SERVER")]
    pub server: String,
    /// This worker's token (`kiln token create --worker NAME`), or the server's shared one.
    #[arg(long, env = "KILN_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: String,
    /// Builders on this host (at least 1). Default: one per two cores.
    #[arg(long, env = "KILN_WORKERS", value_parser = at_least_one)]
    pub workers: Option<usize>,
    /// Largest source archive fetched, in MiB (as the server's limit).
    #[arg(long, env = "KILN_MAX_UPLOAD_MIB", default_value_t = 20)]
    pub max_upload_mib: u64,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Args)]
pub struct TryArgs {
    /// A .wasm or signed .cwasm file, or the id of a version on the server.
    pub plugin: String,
    /// For a .cwasm: the server's signing key (what GET /signing-key answered, or its hex); the artifact is verified against it before it is loaded.
    #[arg(long)]
    pub verify_key: Option<PathBuf>,
    /// The request, e.g. 'GET /admin'.
    #[arg(long, default_value = "GET /")]
    pub request: String,
    /// A request header, 'name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The request body.
    #[arg(long)]
    pub body: Option<String>,
    /// Status of the stub upstream's response.
    #[arg(long, default_value_t = 200)]
    pub upstream_status: u32,
    /// A header of the upstream's response, 'name: value' (repeatable).
    #[arg(long = "upstream-header")]
    pub upstream_headers: Vec<String>,
    /// The upstream's response body.
    #[arg(long)]
    pub upstream_body: Option<String>,
    /// A file with the plugin configuration (default: the version's conf).
    #[arg(long)]
    pub conf: Option<std::path::PathBuf>,
    /// A scenario file (JSON): requests in a row through one running
    /// plugin, their origin responses, call-out answers per cluster and
    /// time passing between requests; instead of --request and the flags
    /// that describe one request.
    #[arg(long, conflicts_with_all = ["request", "headers", "body", "upstream_status", "upstream_headers", "upstream_body", "ticks"])]
    pub scenario: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also measure the startup profile (JIT, .cwasm load, instantiation, first response).
    #[arg(long)]
    pub profile: bool,
    /// Timer ticks delivered to the plugin's root context after it starts.
    #[arg(long, default_value_t = 0)]
    pub ticks: u32,
    /// Time limit of the plugin, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Fuel limit of the plugin (about one unit per instruction). A `.cwasm`
    /// is built for edge servers, which do not meter fuel: only the time
    /// limit applies to it.
    #[arg(long, default_value_t = 500_000_000)]
    pub fuel: u64,
    /// The kiln server, for a version id.
    #[arg(long, env = "KILN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An owner token, for a version id.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EdgeArgs {
    #[command(subcommand)]
    pub command: Option<EdgeCommand>,
    #[command(flatten)]
    pub agent: EdgeAgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum EdgeCommand {
    /// Prints an Envoy bootstrap that takes its wasm filter from the agent's directory.
    EnvoyConfig(EnvoyConfigArgs),
}

#[derive(Debug, Args)]
pub struct EdgeAgentArgs {
    /// The kiln server, e.g. http://10.0.0.5:8080.
    #[arg(long, env = "KILN_SERVER", required = true)]
    pub server: Option<String>,
    /// An edge token (`kiln token create --edge --owner N [--app ID]`).
    #[arg(long, env = "KILN_EDGE_TOKEN", hide_env_values = true, required = true)]
    pub edge_token: Option<String>,
    /// The application whose channel is deployed.
    #[arg(long, env = "KILN_APP", required = true)]
    pub app: Option<String>,
    /// The channel to follow.
    #[arg(long, env = "KILN_CHANNEL", default_value = "production")]
    pub channel: String,
    /// Where the modules and Envoy's extension config file are written.
    #[arg(long, env = "KILN_EDGE_DIR", required = true)]
    pub dir: Option<PathBuf>,
    /// The name of the wasm HTTP filter in Envoy's config (as given to envoy-config).
    #[arg(long, default_value = "kiln")]
    pub filter_name: String,
    /// Seconds each long poll of the channel waits for a change (1 to 60).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub wait_seconds: u64,
    /// Seconds before a failed download or an unreachable server is tried again (at least 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_seconds: u64,
}

#[derive(Debug, Args)]
pub struct EnvoyConfigArgs {
    /// The agent's --dir.
    #[arg(long, env = "KILN_EDGE_DIR")]
    pub dir: PathBuf,
    /// Where Envoy listens for requests, e.g. 127.0.0.1:10000.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where every request goes, HOST:PORT (an IP address or a DNS name).
    #[arg(long)]
    pub origin: String,
    /// Envoy's admin interface (stats, /ready); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// The name of the wasm HTTP filter (as given to the agent).
    #[arg(long, default_value = "kiln")]
    pub filter_name: String,
}

/// A count that must be at least 1, such as a worker's builders.
fn at_least_one(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
