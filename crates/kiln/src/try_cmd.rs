//! `kiln try`: runs a plugin on one request, or a scenario of requests, in
//! kiln's proxy-wasm host and prints what it did. The plugin is a `.wasm`
//! file or a version on a kiln server (its binary and configuration are
//! downloaded).

use crate::cli::TryArgs;
use anyhow::{Context, bail};
use kiln_wasm::{
    Exchange, HostEngine, Scenario, ScenarioResult, TrialLimits, TrialRequest, TrialResult,
    run_scenario, startup_profile,
};
use std::fmt::Write;
use std::time::Duration;

fn parse_header(raw: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = raw
        .split_once(':')
        .with_context(|| format!("header {raw:?} must look like 'name: value'"))?;
    Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
}

/// The plugin's bytes and its stored configuration, if it is a version.
async fn load(args: &TryArgs) -> anyhow::Result<(Vec<u8>, Option<String>)> {
    if std::path::Path::new(&args.plugin).exists() {
        return Ok((
            std::fs::read(&args.plugin).with_context(|| format!("reading {}", args.plugin))?,
            None,
        ));
    }
    let id = kiln_domain::BuildId::parse(&args.plugin)
        .map_err(|_| anyhow::anyhow!("{} is neither a file nor a version id", args.plugin))?;
    let token = args
        .token
        .as_deref()
        .context("a version id needs --token (or KILN_TOKEN)")?;
    let http = reqwest::Client::new();
    let base = args.server.trim_end_matches('/');
    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(token).send();
    let version = get(format!("/version/{id}")).await?;
    if !version.status().is_success() {
        bail!(
            "the server answered {} for version {id}: {}",
            version.status(),
            version.text().await.unwrap_or_default()
        );
    }
    let version: serde_json::Value = version.json().await?;
    let binary = get(format!("/version/{id}/binary"))
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok((binary.to_vec(), version["conf"].as_str().map(str::to_owned)))
}

/// The request from the arguments, checked before anything is downloaded;
/// its `conf` is `--conf`, or else set from the version once it is loaded.
fn request(args: &TryArgs) -> anyhow::Result<TrialRequest> {
    let (method, path) = args
        .request
        .trim()
        .split_once(' ')
        .context("--request must look like 'GET /path'")?;
    let mut request = TrialRequest::get(path.trim());
    request.method = method.to_ascii_uppercase();
    request.headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<_>>()?;
    request.body = args.body.clone().unwrap_or_default();
    request.upstream.status = args.upstream_status;
    request.upstream.headers = args
        .upstream_headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<_>>()?;
    request.upstream.body = args.upstream_body.clone().unwrap_or_default();
    request.ticks = args.ticks;
    if let Some(path) = &args.conf {
        request.conf =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    request.check()?;
    Ok(request)
}

/// The scenario from `--scenario`, checked before anything is downloaded.
fn scenario(path: &std::path::Path, args: &TryArgs) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut scenario: Scenario = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a scenario", path.display()))?;
    if let Some(conf) = &args.conf {
        scenario.conf =
            std::fs::read_to_string(conf).with_context(|| format!("reading {}", conf.display()))?;
    }
    scenario.check()?;
    Ok(scenario)
}

pub async fn run(args: TryArgs) -> anyhow::Result<()> {
    // One request is a scenario of one; its result keeps its own shape.
    let (single, mut scenario) = match &args.scenario {
        Some(path) => (None, scenario(path, &args)?),
        None => {
            let request = request(&args)?;
            let scenario = request.scenario();
            (Some(request), scenario)
        }
    };
    let (wasm, stored_conf) = load(&args).await?;
    if args.conf.is_none() && scenario.conf.is_empty() {
        scenario.conf = stored_conf.unwrap_or_default();
    }
    let limits = TrialLimits {
        wall: Duration::from_millis(args.timeout_ms),
        fuel: args.fuel,
        ..TrialLimits::default()
    };
    let verify_key = verify_key(&args, &wasm)?;
    let profile = args.profile;
    let (result, profile) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (engine, plugin) = match verify_key {
            // A .cwasm (from ?format=cwasm) loads only into the engine kiln
            // made it for, the edge servers': no fuel, only the time limit.
            Some(key) => {
                let engine = HostEngine::edge()?;
                let (plugin, header) = engine.load_signed(&wasm, &key, None)?;
                eprintln!(
                    "verified: signed for version {} ({})",
                    header.version_id, header.target
                );
                (engine, plugin)
            }
            None => {
                let engine = HostEngine::new()?;
                let plugin = engine.compile(&wasm)?;
                (engine, plugin)
            }
        };
        let (result, _) = run_scenario(&engine, &plugin, &scenario, &limits)?;
        let profile = (profile && !kiln_wasm::signing::is_signed(&wasm))
            .then(|| startup_profile(&HostEngine::edge()?, &wasm, &scenario.conf, 50))
            .transpose()?;
        Ok((result, profile))
    })
    .await??;
    let failure = result.failure.clone();
    if args.json {
        let mut value = match (&single, failure.is_none()) {
            (Some(_), true) => serde_json::to_value(TrialResult::from(result.clone()))?,
            _ => serde_json::to_value(&result)?,
        };
        if let Some(profile) = profile {
            value["startup_profile"] = serde_json::to_value(profile)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render(&args, &result));
        if let Some(p) = profile {
            println!(
                "startup profile (median of {} cold starts): JIT compile {} µs, .cwasm load {} µs, instantiate {} µs, first response {} µs",
                p.runs, p.jit_compile_us, p.cwasm_load_us, p.instantiate_us, p.first_response_us
            );
        }
    }
    if let Some(failure) = failure {
        let during = match failure.request {
            Some(i) => format!(" during request {}", i + 1),
            None => String::new(),
        };
        bail!(
            "the plugin failed in {}{during}: {}",
            failure.callback,
            failure.message
        );
    }
    Ok(())
}

/// The key a `.cwasm` must be verified with. A `.cwasm` is machine code
/// that runs as it is: it is loaded only once its signature checks out.
fn verify_key(
    args: &TryArgs,
    plugin: &[u8],
) -> anyhow::Result<Option<ed25519_dalek::VerifyingKey>> {
    let signed = kiln_wasm::signing::is_signed(plugin);
    if !signed && kiln_wasm::host::is_precompiled(plugin) {
        bail!(
            "the file is an unsigned .cwasm; kiln loads only the signed ones it serves (?format=cwasm)"
        );
    }
    match (&args.verify_key, signed) {
        (Some(path), true) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let key = kiln_wasm::signing::PublicKey::parse(&text)
                .with_context(|| format!("reading the key in {}", path.display()))?;
            Ok(Some(key))
        }
        (None, true) => bail!(
            "a .cwasm is native code: pass --verify-key FILE with the server's signing key (GET /signing-key) to check who compiled it"
        ),
        (Some(_), false) => bail!("--verify-key is for a signed .cwasm; this is a .wasm"),
        (None, false) => Ok(None),
    }
}

fn headers(out: &mut String, headers: &[(String, String)]) {
    for (k, v) in headers {
        let _ = writeln!(out, "  {k}: {v}");
    }
}

fn render(args: &TryArgs, result: &ScenarioResult) -> String {
    let mut out = String::new();
    let start = |out: &mut String, logs: &[kiln_wasm::LogLine]| {
        for line in logs {
            let _ = writeln!(out, "  [{}] {}", line.level, line.message);
        }
    };
    if !result.logs.is_empty() {
        let _ = writeln!(out, "plugin logs outside requests (start, timer):");
        start(&mut out, &result.logs);
    }
    for (i, exchange) in result.exchanges.iter().enumerate() {
        let name = match &args.scenario {
            Some(_) => format!("request {}", i + 1),
            None => args.request.clone(),
        };
        if args.scenario.is_some() {
            let _ = writeln!(out, "== request {} ==", i + 1);
        }
        render_exchange(&mut out, &name, exchange);
    }
    if !result.metrics.is_empty() {
        let _ = writeln!(out, "metrics:");
        for m in &result.metrics {
            let _ = writeln!(out, "  {} ({:?}): {}", m.name, m.kind, m.value);
        }
    }
    if args.scenario.is_some() && !result.shared_data.is_empty() {
        let _ = writeln!(out, "shared data:");
        for (k, v) in &result.shared_data {
            let _ = writeln!(out, "  {k} = {v}");
        }
    }
    if let Some(failure) = &result.failure {
        let _ = writeln!(
            out,
            "the plugin failed in {}: {}",
            failure.callback, failure.message
        );
    }
    out
}

fn render_exchange(out: &mut String, name: &str, exchange: &Exchange) {
    for call in &exchange.calls {
        let path = call
            .headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map_or("", |(_, v)| v.as_str());
        let _ = writeln!(out, "call out to cluster {}: {path}", call.cluster);
    }
    match (&exchange.local_response, &exchange.forwarded, exchange.held) {
        (Some(local), forwarded, _) => {
            if forwarded.is_some() {
                let _ = writeln!(
                    out,
                    "request forwarded upstream; the plugin then answered itself:"
                );
            } else {
                let _ = writeln!(out, "the plugin answered {name} itself (not forwarded):");
            }
            let _ = writeln!(out, "  status {}", local.status);
            headers(out, &local.headers);
            if !local.body.is_empty() {
                let _ = writeln!(out, "  body: {}", local.body);
            }
        }
        (None, _, Some(kiln_wasm::Held::Request)) => {
            let _ = writeln!(
                out,
                "the plugin paused the request and never resumed it; at the stream idle timeout the client gets:"
            );
        }
        (None, Some(forwarded), held) => {
            let _ = writeln!(out, "request as forwarded upstream:");
            headers(out, &forwarded.headers);
            if !forwarded.body.is_empty() {
                let _ = writeln!(out, "  body: {}", forwarded.body);
            }
            if held == Some(kiln_wasm::Held::Response) {
                let _ = writeln!(
                    out,
                    "the plugin paused the response and never resumed it; at the stream idle timeout the client gets:"
                );
            }
        }
        (None, None, _) => {}
    }
    if let Some(response) = &exchange.response {
        let _ = writeln!(out, "response to the client, after the filter:");
        let _ = writeln!(out, "  status {}", response.status);
        headers(out, &response.headers);
        if !response.body.is_empty() {
            let _ = writeln!(out, "  body: {}", response.body);
        }
    }
    let _ = writeln!(out, "plugin logs:");
    if exchange.logs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for line in &exchange.logs {
        let _ = writeln!(out, "  [{}] {}", line.level, line.message);
    }
}
