//! `kiln edge`: an agent beside Envoy. It follows one channel of an
//! application (a long poll, not a busy loop), downloads the version's
//! module, checks its sha256 and that it is a proxy-wasm plugin, writes it
//! into its directory atomically, then moves a new extension-config file
//! over the old one, so that Envoy's file-based extension config discovery
//! swaps the wasm filter without a restart. Anything that fails leaves the
//! last good version serving, with a log line that says why.
//!
//! `kiln edge envoy-config` prints an Envoy bootstrap that takes its wasm
//! filter from that file.
//!
//! Layout:
//! - [`agent`]: the follow → download → check → swap loop.
//! - [`envoy`]: what Envoy reads: the bootstrap and the extension config.
//! - [`files`]: atomic writes into the agent's directory.

mod agent;
mod envoy;
mod files;

use crate::cli::{EdgeArgs, EdgeCommand};

pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    match args.command {
        Some(EdgeCommand::EnvoyConfig(config)) => envoy::print_bootstrap(&config),
        None => agent::run(agent::AgentConfig::from_args(args.agent)?).await,
    }
}
