//! `kiln`: the one binary. `serve` runs the API (and, unless `--workers 0`,
//! builders in the same process), `worker` runs builders on another host,
//! `token` issues, lists and revokes owner, edge and worker tokens, `edge`
//! keeps a local Envoy's wasm filter at a channel's version, and the
//! client commands (`login`, `init`, `app`, `deploy`, `logs` …) talk to a
//! server as a person does.

mod build_args;
mod builders;
mod cli;
mod client;
mod edge;
mod fsck;
mod serve;
mod token;
mod try_cmd;
mod worker;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.log_format);
    // A job in the sandbox needs no runtime and its threads.
    if let cli::Command::WasmChild { dir } = &cli.command {
        return exit_code(kiln_trial::child::run(dir));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Serve(args) => serve::run(*args).await,
            cli::Command::Worker(args) => worker::run(args).await,
            cli::Command::Try(args) => try_cmd::run(args).await,
            cli::Command::Token(cli::TokenCommand::Create(args)) => token::create(args).await,
            cli::Command::Token(cli::TokenCommand::Revoke(args)) => token::revoke(args).await,
            cli::Command::Token(cli::TokenCommand::List(args)) => token::list(args).await,
            cli::Command::Client(command) => client::run(command).await,
            cli::Command::Edge(args) => edge::run(args).await,
            cli::Command::Fsck(args) => fsck::run(args).await,
            cli::Command::WasmChild { .. } => unreachable!("run before the runtime"),
        }
    });
    exit_code(result)
}

fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}
