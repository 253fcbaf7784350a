//! The agent's loop: follow → download → check → swap. Only the loop
//! waits; each step says what it did or why it refused.

use super::envoy::filter_config;
use super::files::{self, FILTER_CONFIG, MODULES, STATE};
use crate::cli::EdgeAgentArgs;
use crate::serve::shutdown_signal;
use anyhow::{Context, bail};
use kiln_domain::{AppId, Channel, ChannelName, ChannelTarget};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// Largest module downloaded (the server's build output cap, and some).
const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;
/// Longest long poll the server grants.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// What the agent runs with, checked once at start.
#[derive(Debug)]
pub struct AgentConfig {
    server: String,
    token: String,
    app: AppId,
    channel: ChannelName,
    /// Absolute: Envoy reads the module by the path written in the config.
    dir: PathBuf,
    filter_name: String,
    wait: Duration,
    retry: Duration,
}

impl AgentConfig {
    pub fn from_args(args: EdgeAgentArgs) -> anyhow::Result<Self> {
        // clap requires these unless a subcommand runs instead.
        let (Some(server), Some(token), Some(app), Some(dir)) =
            (args.server, args.edge_token, args.app, args.dir)
        else {
            bail!("kiln edge needs --server, --edge-token, --app and --dir");
        };
        let app = AppId::parse(&app).context("--app")?;
        let channel = ChannelName::parse(&args.channel).context("--channel")?;
        std::fs::create_dir_all(dir.join(MODULES))
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            app,
            channel,
            dir,
            filter_name: args.filter_name,
            // Both in range: clap refused anything else at start.
            wait: Duration::from_secs(args.wait_seconds),
            retry: Duration::from_secs(args.retry_seconds),
        })
    }
}

/// What is deployed: the version Envoy's config file names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Deployed {
    version_id: String,
    version: String,
    sha256: String,
    revision: i64,
}

/// Why a version was not deployed; the last good one keeps serving.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the download failed: {0}")]
    Download(String),
    #[error("the module's sha256 is {got}, not the version's {want}: refused")]
    Checksum { got: String, want: String },
    #[error("the module is not a plugin Envoy would load: {0}")]
    NotAPlugin(String),
    #[error("writing it failed: {0:#}")]
    Write(anyhow::Error),
}

/// One answer of the long poll.
enum Poll {
    Changed(Box<Channel>),
    Unchanged,
    NotPromoted,
}

struct Agent {
    config: AgentConfig,
    http: reqwest::Client,
    deployed: Option<Deployed>,
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(MAX_WAIT + Duration::from_secs(30))
        .build()
        .context("making the HTTP client")?;
    let deployed = std::fs::read(config.dir.join(STATE))
        .ok()
        .and_then(|raw| serde_json::from_slice::<Deployed>(&raw).ok())
        .filter(|d| {
            config.dir.join(FILTER_CONFIG).exists()
                && files::module_path(&config.dir, &d.sha256).exists()
        });
    tracing::info!(app = %config.app, channel = %config.channel, dir = %config.dir.display(),
        serving = deployed.as_ref().map(|d| d.version.as_str()).unwrap_or("nothing yet"), "kiln edge started");
    let mut agent = Agent {
        config,
        http,
        deployed,
    };
    tokio::select! {
        () = agent.follow() => Ok(()),
        () = shutdown_signal() => {
            tracing::info!("kiln edge stopped; Envoy keeps serving what it has");
            Ok(())
        }
    }
}

impl Agent {
    /// Follows the channel forever. `after` is the latest revision seen,
    /// deployed or refused: a refused one is tried again after
    /// `--retry-seconds`, and a newer one at once.
    async fn follow(&mut self) {
        let mut after = 0;
        let mut refused: Option<Box<Channel>> = None;
        loop {
            let wait = if refused.is_some() {
                self.config.retry
            } else {
                self.config.wait
            };
            match self.poll(after, wait).await {
                Ok(Poll::Changed(channel)) => {
                    after = channel.revision;
                    refused = self.apply(channel).await;
                }
                Ok(Poll::Unchanged) => {
                    if let Some(channel) = refused.take() {
                        refused = self.apply(channel).await;
                    }
                }
                Ok(Poll::NotPromoted) => {
                    tracing::info!(channel = %self.config.channel, "the channel has no version yet; waiting");
                    after = 0;
                    tokio::time::sleep(self.config.retry).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot read the channel: {e:#}; trying again in {:?}",
                        self.config.retry
                    );
                    tokio::time::sleep(self.config.retry).await;
                }
            }
        }
    }

    async fn poll(&self, after: i64, wait: Duration) -> anyhow::Result<Poll> {
        let c = &self.config;
        let url = format!(
            "{}/application/{}/channels/{}?after={after}&wait_seconds={}",
            c.server,
            c.app,
            c.channel,
            wait.as_secs()
        );
        let r = self
            .http
            .get(&url)
            .bearer_auth(&c.token)
            .send()
            .await
            .context("reaching the server")?;
        match r.status() {
            StatusCode::OK => Ok(Poll::Changed(Box::new(
                r.json().await.context("reading the channel")?,
            ))),
            StatusCode::NO_CONTENT => Ok(Poll::Unchanged),
            StatusCode::NOT_FOUND if after == 0 => {
                let body = r.text().await.unwrap_or_default();
                if body.contains("has no channel") {
                    Ok(Poll::NotPromoted)
                } else {
                    bail!("the server answered 404: {body}")
                }
            }
            status => bail!(
                "the server answered {status}: {}",
                r.text().await.unwrap_or_default()
            ),
        }
    }

    /// Deploys the channel's version unless it is the one deployed; the
    /// channel back when it was refused.
    async fn apply(&mut self, channel: Box<Channel>) -> Option<Box<Channel>> {
        let target = &channel.version;
        if self
            .deployed
            .as_ref()
            .is_some_and(|d| d.version_id == target.id.to_string())
        {
            return None;
        }
        match self.deploy(target, channel.revision).await {
            Ok(deployed) => {
                tracing::info!(
                    version = deployed.version,
                    version_id = deployed.version_id,
                    sha256 = deployed.sha256,
                    revision = deployed.revision,
                    "now serving"
                );
                files::remove_other_modules(&self.config.dir, &deployed.sha256);
                self.deployed = Some(deployed);
                None
            }
            Err(refusal) => {
                let serving = self
                    .deployed
                    .as_ref()
                    .map(|d| format!("version {} keeps serving", d.version))
                    .unwrap_or_else(|| "nothing is deployed yet".into());
                tracing::error!(version = %target.version, version_id = %target.id, revision = channel.revision,
                    "version {} not deployed, {serving}: {refusal}", target.version);
                Some(channel)
            }
        }
    }

    async fn deploy(&self, target: &ChannelTarget, revision: i64) -> Result<Deployed, Refusal> {
        let bytes = self
            .download(target)
            .await
            .map_err(|e| Refusal::Download(format!("{e:#}")))?;
        let got = hex::encode(Sha256::digest(&bytes));
        if got != target.binary_sha256 {
            return Err(Refusal::Checksum {
                got,
                want: target.binary_sha256.clone(),
            });
        }
        let phases = target.phases.clone();
        let module = bytes.clone();
        tokio::task::spawn_blocking(move || {
            kiln_wasm::check::check_module(&module, phases.as_slice()).map(drop)
        })
        .await
        .map_err(|e| Refusal::NotAPlugin(e.to_string()))?
        .map_err(|e| Refusal::NotAPlugin(e.to_string()))?;
        let dir = &self.config.dir;
        let module = files::module_path(dir, &target.binary_sha256);
        files::write_atomically(&module, &bytes).map_err(Refusal::Write)?;
        let version_info = format!(
            "{} {} (revision {revision})",
            self.config.channel, target.version
        );
        let config = filter_config(
            &self.config.filter_name,
            &module,
            &target.binary_sha256,
            &target.conf,
            &version_info,
        );
        let deployed = Deployed {
            version_id: target.id.to_string(),
            version: target.version.to_string(),
            sha256: target.binary_sha256.clone(),
            revision,
        };
        // The module is in place before the config that names it.
        files::write_atomically(&dir.join(FILTER_CONFIG), config.to_string().as_bytes())
            .map_err(Refusal::Write)?;
        let state = serde_json::to_vec(&deployed).map_err(|e| Refusal::Write(e.into()))?;
        files::write_atomically(&dir.join(STATE), &state).map_err(Refusal::Write)?;
        Ok(deployed)
    }

    async fn download(&self, target: &ChannelTarget) -> anyhow::Result<bytes::Bytes> {
        let url = format!("{}{}", self.config.server, target.artifact);
        let r = self
            .http
            .get(&url)
            .bearer_auth(&self.config.token)
            .send()
            .await?;
        if r.status() != StatusCode::OK {
            bail!("{url} answered {}", r.status());
        }
        if r.content_length().is_some_and(|n| n > MAX_MODULE_BYTES) {
            bail!("{url} is larger than {MAX_MODULE_BYTES} bytes");
        }
        let bytes = r.bytes().await?;
        anyhow::ensure!(
            bytes.len() as u64 <= MAX_MODULE_BYTES,
            "{url} is larger than {MAX_MODULE_BYTES} bytes"
        );
        Ok(bytes)
    }
}
