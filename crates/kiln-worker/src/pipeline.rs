//! One build, stage by stage: download, unpack, dependencies, compile (in
//! the sandbox), check, report. A stage fails in one of two ways: the
//! customer's input is at fault (the build is `failed`, the log says why)
//! or kiln is (the build is reported crashed and retried).

use crate::client::{Client, ClientError, SuccessReport};
use crate::log::{BuildLog, millis};
use futures::FutureExt;
use kiln_build::archive::{self, ArchiveLimits};
use kiln_build::{Prepared, Toolchain};
use kiln_domain::worker_api::Claim;
use kiln_domain::{BuildProfile, Language, Phase};
use kiln_sandbox::{Limits, RunOutcome, Sandbox, Scratch};
use kiln_trial::{Outcome, Runner};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Default cap on the compiled module: 50 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 50 * 1024 * 1024;
/// Default heartbeat period; the server's lease is several times longer.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How a [`Pipeline`] builds.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Sandbox limits of the compile. wasm-opt runs under them too, with
    /// a disk sized to its input.
    pub limits: Limits,
    /// Limits on the source archive; its `max_upload_bytes` also caps the
    /// download.
    pub archive_limits: ArchiveLimits,
    /// Largest `.wasm` a build may produce, in bytes.
    pub max_output_bytes: u64,
    /// Longest time between two heartbeats; shorter when the server grants
    /// a lease under three times as long.
    pub heartbeat: Duration,
    /// Run binaryen's `wasm-opt` on successful builds (this binary, in the
    /// sandbox); the result is kept only if it validates and answers a
    /// smoke request like the original.
    pub wasm_opt: Option<std::path::PathBuf>,
    /// How often the live log is sent to the server.
    pub live_flush: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            archive_limits: ArchiveLimits::default(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            heartbeat: DEFAULT_HEARTBEAT,
            wasm_opt: None,
            live_flush: crate::log::LIVE_FLUSH,
        }
    }
}

/// Why a build did not succeed.
#[derive(Debug)]
enum Failure {
    /// The customer's source did not build; the sentence is shown to them.
    Customer(String),
    /// kiln's own failure; retried.
    Ours(String),
    /// The server no longer leases the build to us; nothing to report.
    LeaseLost,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::LeaseLost(_) => Failure::LeaseLost,
            e => Failure::Ours(e.to_string()),
        }
    }
}

/// What a caught panic said, for the log and the crash report.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// The result of the build stages.
struct Built {
    binary: Vec<u8>,
    startup: Option<kiln_wasm::StartupProfile>,
}

/// Cold starts measured for a version's startup profile.
const PROFILE_RUNS: u32 = 20;
/// What a module's Wizer init function may use at build time.
const PREINIT_LIMITS: kiln_wasm::TrialLimits = kiln_wasm::TrialLimits {
    wall: Duration::from_secs(10),
    fuel: 10_000_000_000,
    memory_bytes: 256 << 20,
    host_bytes: 16 << 20,
};

/// A rewrite of the build's module (wasm-opt's output, a Wizer snapshot)
/// is kept only if the smoke requests found it answering like the
/// original (`same`) and it is still a valid plugin for the build's
/// phases: it was written where the customer's code ran, so it is checked
/// like any output.
fn keep_rewrite(
    rewrite: Vec<u8>,
    same: Outcome<bool>,
    phases: &[Phase],
    what: &str,
) -> Result<Vec<u8>, String> {
    match same {
        Outcome::Done(true) => {}
        Outcome::Done(false) => return Err(format!("{what} answers a smoke request differently")),
        // The original may fail its smoke request too: nothing to compare.
        Outcome::PluginFailed(e) | Outcome::HostFailed(e) => {
            return Err(format!("the smoke request failed: {e}"));
        }
    }
    kiln_wasm::check::check_module(&rewrite, phases).map_err(|e| e.to_string())?;
    Ok(rewrite)
}

/// Runs claimed builds, one per [`run`](Pipeline::run), with a sandbox and
/// a toolchain per language. One is shared by all builders of a worker.
pub struct Pipeline {
    /// How builds are run.
    pub config: PipelineConfig,
    sandbox: Arc<dyn Sandbox>,
    toolchains: Vec<Arc<dyn Toolchain>>,
    /// Runs the customer's module (smoke requests, pre-initialization, the
    /// startup profile) in sandboxed children: this process never
    /// instantiates it.
    children: Runner,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("sandbox", &self.sandbox.name())
            .finish_non_exhaustive()
    }
}

/// Records how long each stage took.
#[derive(Default)]
struct Stages(BTreeMap<String, u64>);

impl Stages {
    fn record(&mut self, name: &str, started: Instant) {
        self.0.insert(name.to_owned(), millis(started.elapsed()));
    }
}

/// Resolves the dependencies outside the sandbox (the toolchain fetches
/// them; nothing of the customer's runs), their output to the log.
async fn resolve_dependencies(
    toolchain: &dyn Toolchain,
    scratch: &Scratch,
    src: &std::path::Path,
    log: &mut BuildLog,
    stages: &mut Stages,
) -> Result<Prepared, Failure> {
    let started = Instant::now();
    let prepared = toolchain.prepare(scratch.path(), src).await.map_err(|e| {
        if e.is_customer_error() {
            Failure::Customer(e.to_string())
        } else {
            Failure::Ours(e.to_string())
        }
    })?;
    log.output(&prepared.log);
    stages.record("dependencies", started);
    log.kiln("dependencies resolved outside the sandbox; compiling inside it");
    Ok(prepared)
}

impl Pipeline {
    /// `child_program` is a kiln binary the sandbox user can run, for the
    /// `kiln wasm-child` processes that run the customer's module.
    pub fn new(
        config: PipelineConfig,
        sandbox: Arc<dyn Sandbox>,
        toolchains: Vec<Arc<dyn Toolchain>>,
        child_program: std::path::PathBuf,
    ) -> Self {
        let children = Runner::new(sandbox.clone(), child_program);
        Self {
            config,
            sandbox,
            toolchains,
            children,
        }
    }

    fn toolchain(&self, language: Language) -> Option<&Arc<dyn Toolchain>> {
        self.toolchains.iter().find(|t| t.language() == language)
    }

    /// Runs one claimed build to its report. Stops early, without reporting,
    /// when `lost` fires; reports a crash when `abort` fires (shutdown).
    pub async fn run(
        &self,
        client: &Client,
        claim: &Claim,
        lost: &CancellationToken,
        abort: &CancellationToken,
    ) {
        let mut log = BuildLog::default();
        // Sends the log to the server as it grows, for live readers; it
        // ends with this function, before the report, which carries it all.
        let shipper = AbortOnDropHandle::new(tokio::spawn(crate::log::ship(
            client.clone(),
            claim.clone(),
            log.tail(),
            self.config.live_flush,
        )));
        let mut stages = Stages::default();
        log.kiln(format!(
            "build {} of version {} (attempt {}), sandbox: {}",
            claim.build.id,
            claim.build.version,
            claim.build.attempt,
            self.sandbox.name()
        ));
        // A panic in kiln's own code ends this build as a crash (retried,
        // its lease released), not the builder.
        let build =
            AssertUnwindSafe(self.build(client, claim, &mut log, &mut stages)).catch_unwind();
        let result = tokio::select! {
            result = build => result.unwrap_or_else(|panic| {
                Err(Failure::Ours(format!("kiln's build code panicked: {}", panic_message(&*panic))))
            }),
            _ = lost.cancelled() => Err(Failure::LeaseLost),
            _ = abort.cancelled() => Err(Failure::Ours("the worker shut down during the build".into())),
        };
        let mut profile = BuildProfile {
            stages_ms: std::mem::take(&mut stages.0),
            sandbox: Some(self.sandbox.name().to_owned()),
            startup: None,
        };
        let build = claim.build.id;
        drop(shipper);
        let reported = match result {
            Ok(built) => {
                log.kiln(format!("succeeded: {} bytes", built.binary.len()));
                profile.startup = built.startup;
                let report = SuccessReport {
                    binary: built.binary.into(),
                    logs: log.into_text(),
                    profile,
                };
                client.success(claim, report).await
            }
            Err(Failure::Customer(reason)) => {
                log.kiln(format!("failed: {reason}"));
                client.fail(claim, log.into_text(), &reason, profile).await
            }
            Err(Failure::Ours(reason)) => {
                tracing::error!(%build, %reason, "build crashed");
                log.kiln(format!(
                    "crashed (kiln's fault; the build is retried): {reason}"
                ));
                client.crash(claim, log.into_text(), &reason).await
            }
            Err(Failure::LeaseLost) => Ok(()),
        };
        match reported {
            Ok(()) => tracing::info!(%build, "build reported"),
            Err(ClientError::LeaseLost(_)) => {
                tracing::warn!(%build, "report refused: the lease was lost")
            }
            Err(e) => {
                tracing::error!(%build, error = %e, "could not report the build; its lease will expire and it is retried")
            }
        }
    }

    async fn build(
        &self,
        client: &Client,
        claim: &Claim,
        log: &mut BuildLog,
        stages: &mut Stages,
    ) -> Result<Built, Failure> {
        let started = Instant::now();
        let source = client
            .source(claim, self.config.archive_limits.max_upload_bytes)
            .await?;
        stages.record("download", started);
        log.kiln(format!(
            "downloaded the source: {} bytes ({})",
            source.len(),
            claim.source_kind
        ));

        let scratch = self
            .sandbox
            .create_scratch(&self.config.limits)
            .await
            .map_err(|e| Failure::Ours(format!("creating the build directory: {e}")))?;
        let result = self.build_in(claim, &source, &scratch, log, stages).await;
        if let Err(e) = self.sandbox.remove_scratch(scratch).await {
            tracing::error!(build = %claim.build.id, error = %e, "could not remove a build directory");
        }
        result
    }

    async fn build_in(
        &self,
        claim: &Claim,
        source: &[u8],
        scratch: &Scratch,
        log: &mut BuildLog,
        stages: &mut Stages,
    ) -> Result<Built, Failure> {
        let toolchain = self.toolchain(claim.build.language).ok_or_else(|| {
            Failure::Ours(format!(
                "this worker has no {} toolchain",
                claim.build.language
            ))
        })?;
        let src = self.unpack(source, scratch, log, stages).await?;
        let prepared = resolve_dependencies(toolchain.as_ref(), scratch, &src, log, stages).await?;
        self.compile(toolchain.as_ref(), &prepared, scratch, log, stages)
            .await?;
        let binary = self
            .checked_output(toolchain.as_ref(), &prepared, scratch, claim, log, stages)
            .await?;
        Ok(self.post_process(binary, claim, log, stages).await)
    }

    /// Unpacks the source archive into the scratch directory's `src`.
    async fn unpack(
        &self,
        source: &[u8],
        scratch: &Scratch,
        log: &mut BuildLog,
        stages: &mut Stages,
    ) -> Result<std::path::PathBuf, Failure> {
        let started = Instant::now();
        let src = scratch.path().join("src");
        let limits = self.config.archive_limits.clone();
        let (bytes, dest) = (source.to_vec(), src.clone());
        let summary = tokio::task::spawn_blocking(move || {
            std::fs::create_dir(&dest)?;
            Ok::<_, std::io::Error>(archive::unpack(&bytes, &dest, &limits))
        })
        .await
        .map_err(|e| Failure::Ours(format!("unpacking: {e}")))?
        .map_err(|e| Failure::Ours(format!("creating the source directory: {e}")))?
        .map_err(|e| Failure::Customer(format!("the source archive was refused: {e}")))?;
        stages.record("unpack", started);
        log.kiln(format!(
            "unpacked {} entries, {} bytes",
            summary.entries, summary.unpacked_bytes
        ));
        Ok(src)
    }

    /// Compiles in the sandbox, the compiler's output going to the log.
    async fn compile(
        &self,
        toolchain: &dyn Toolchain,
        prepared: &Prepared,
        scratch: &Scratch,
        log: &mut BuildLog,
        stages: &mut Stages,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let mut command = toolchain.build_command(prepared);
        let tapped = log.tap();
        command.output_tap = Some(tapped.tap.clone());
        let report = self
            .sandbox
            .run(&command, scratch, &self.config.limits)
            .await
            .map_err(|e| Failure::Ours(format!("running the sandbox: {e}")))?;
        stages.record("compile", started);
        tapped.finish(&report);
        self.check_outcome(&report.outcome)
    }

    /// The compiled module, read within its size limit and checked to be a
    /// proxy-wasm plugin that handles the build's phases.
    async fn checked_output(
        &self,
        toolchain: &dyn Toolchain,
        prepared: &Prepared,
        scratch: &Scratch,
        claim: &Claim,
        log: &mut BuildLog,
        stages: &mut Stages,
    ) -> Result<Vec<u8>, Failure> {
        let started = Instant::now();
        let output = toolchain
            .find_output(scratch.path(), prepared)
            .map_err(|e| Failure::Customer(e.to_string()))?;
        // Reading and validating up to max_output_bytes is blocking work.
        let (root, max_bytes) = (scratch.path().to_owned(), self.config.max_output_bytes);
        let phases = claim.build.phases.clone();
        let (binary, module) = tokio::task::spawn_blocking(move || {
            let binary = kiln_sandbox::read_output_file_under(&root, &output, max_bytes)
                .map_err(|e| Failure::Customer(format!("reading the compiled module: {e}")))?;
            let module =
                kiln_wasm::check::check_module(&binary, phases.as_slice()).map_err(|e| {
                    Failure::Customer(format!("the module is not a valid proxy-wasm plugin: {e}"))
                })?;
            Ok::<_, Failure>((binary, module))
        })
        .await
        .map_err(|e| Failure::Ours(format!("checking the compiled module: {e}")))??;
        stages.record("check", started);
        log.kiln(format!(
            "checked: proxy-wasm ABI {}, sha256 {}",
            module.abi_version, module.sha256_hex
        ));
        Ok(binary)
    }

    /// The steps after a checked compile: wasm-opt, pre-initialization and
    /// the startup profile, each kept only when it holds up.
    async fn post_process(
        &self,
        binary: Vec<u8>,
        claim: &Claim,
        log: &mut BuildLog,
        stages: &mut Stages,
    ) -> Built {
        let started = Instant::now();
        let binary = self.optimize(binary, claim, log).await;
        stages.record("optimize", started);

        let started = Instant::now();
        let binary = self.preinitialize(binary, claim, log).await;
        stages.record("preinit", started);

        let started = Instant::now();
        let startup = if claim.build.options.precompile {
            self.profile(&binary, &claim.build.conf, log).await
        } else {
            log.kiln("precompilation and startup profile skipped: turned off for this version");
            None
        };
        stages.record("profile", started);
        Built { binary, startup }
    }

    /// Runs wasm-opt in the sandbox and keeps its output only if it is a
    /// valid plugin that answers a smoke request like the original.
    async fn optimize(&self, binary: Vec<u8>, claim: &Claim, log: &mut BuildLog) -> Vec<u8> {
        let Some(wasm_opt) = &self.config.wasm_opt else {
            return binary;
        };
        if !claim.build.options.optimize {
            log.kiln("wasm-opt skipped: turned off for this version");
            return binary;
        }
        match self.try_optimize(wasm_opt, &binary, claim).await {
            Ok(optimized) => {
                log.kiln(format!(
                    "wasm-opt -O3: {} → {} bytes",
                    binary.len(),
                    optimized.len()
                ));
                optimized
            }
            Err(reason) => {
                log.kiln(format!("wasm-opt result not used: {reason}"));
                binary
            }
        }
    }

    async fn try_optimize(
        &self,
        wasm_opt: &std::path::Path,
        binary: &[u8],
        claim: &Claim,
    ) -> Result<Vec<u8>, String> {
        // A scratch directory of its own: the build's was the customer's
        // code's to fill (with links to host files, say), and this step's
        // input is written as root.
        let limits = Limits {
            disk_bytes: 4 * binary.len() as u64 + (16 << 20),
            ..self.config.limits.clone()
        };
        let scratch = self
            .sandbox
            .create_scratch(&limits)
            .await
            .map_err(|e| format!("creating wasm-opt's directory: {e}"))?;
        let optimized = self.run_wasm_opt(wasm_opt, binary, &scratch, &limits).await;
        if let Err(e) = self.sandbox.remove_scratch(scratch).await {
            tracing::error!(build = %claim.build.id, error = %e, "could not remove wasm-opt's directory");
        }
        let optimized = optimized?;
        let same = self
            .children
            .smoke(binary, &optimized, &claim.build.conf)
            .await
            .map_err(|e| e.to_string())?;
        keep_rewrite(
            optimized,
            same,
            claim.build.phases.as_slice(),
            "the optimized module",
        )
    }

    /// `wasm-opt` on `binary` in the fresh `scratch`: its output.
    async fn run_wasm_opt(
        &self,
        wasm_opt: &std::path::Path,
        binary: &[u8],
        scratch: &Scratch,
        limits: &Limits,
    ) -> Result<Vec<u8>, String> {
        tokio::fs::write(scratch.path().join("in.wasm"), binary)
            .await
            .map_err(|e| format!("writing wasm-opt's input: {e}"))?;
        let guest = std::path::Path::new(kiln_sandbox::GUEST_SCRATCH);
        let command = kiln_sandbox::SandboxCommand {
            program: wasm_opt.to_owned(),
            args: kiln_wasm::optimize::wasm_opt_args(
                kiln_wasm::optimize::LEVEL,
                &guest.join("in.wasm").display().to_string(),
                &guest.join("out.wasm").display().to_string(),
            ),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: guest.to_owned(),
            mounts: Vec::new(),
            output_tap: None,
        };
        let report = self
            .sandbox
            .run(&command, scratch, limits)
            .await
            .map_err(|e| e.to_string())?;
        if report.outcome != RunOutcome::Exited(0) {
            return Err(format!(
                "wasm-opt ended {:?}: {}",
                report.outcome,
                report.log.lines().last().unwrap_or_default()
            ));
        }
        let (root, max_bytes) = (scratch.path().to_owned(), self.config.max_output_bytes);
        tokio::task::spawn_blocking(move || {
            kiln_sandbox::read_output_file_under(&root, std::path::Path::new("out.wasm"), max_bytes)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Runs the module's Wizer init function at build time, in the sandbox,
    /// when it exports one, and keeps the snapshot if it answers a smoke
    /// request like the original.
    async fn preinitialize(&self, binary: Vec<u8>, claim: &Claim, log: &mut BuildLog) -> Vec<u8> {
        let Some(init) = kiln_wasm::preinit::init_export(&binary) else {
            return binary;
        };
        if !claim.build.options.preinit {
            log.kiln(format!(
                "{init} not run: pre-initialization is turned off for this version"
            ));
            return binary;
        }
        match self.try_preinitialize(&binary, claim).await {
            Ok(snapshot) => {
                log.kiln(format!(
                    "pre-initialized with {init} (Wizer): {} → {} bytes",
                    binary.len(),
                    snapshot.len()
                ));
                snapshot
            }
            Err(reason) => {
                log.kiln(format!("pre-initialization not used: {reason}"));
                binary
            }
        }
    }

    async fn try_preinitialize(&self, binary: &[u8], claim: &Claim) -> Result<Vec<u8>, String> {
        let (same, snapshot) = self
            .children
            .preinit(
                binary,
                &claim.build.conf,
                PREINIT_LIMITS,
                self.config.max_output_bytes,
            )
            .await
            .map_err(|e| e.to_string())?;
        keep_rewrite(
            snapshot.unwrap_or_default(),
            same,
            claim.build.phases.as_slice(),
            "the snapshot",
        )
    }

    /// Measures the module's cold starts in the sandbox, as edge servers
    /// will pay them. A plugin that fails its smoke request still builds:
    /// the log says why it has no profile.
    async fn profile(
        &self,
        binary: &[u8],
        conf: &str,
        log: &mut BuildLog,
    ) -> Option<kiln_wasm::StartupProfile> {
        let outcome = self.children.profile(binary, conf, PROFILE_RUNS).await;
        match outcome {
            Ok(Outcome::Done(p)) => {
                log.kiln(format!(
                    "startup: JIT compile {} µs, .cwasm load {} µs, instantiate {} µs, first response {} µs",
                    p.jit_compile_us, p.cwasm_load_us, p.instantiate_us, p.first_response_us
                ));
                Some(p)
            }
            Ok(Outcome::PluginFailed(e)) => {
                log.kiln(format!("no startup profile: the smoke request failed: {e}"));
                None
            }
            Ok(Outcome::HostFailed(e)) => {
                log.kiln(format!("no startup profile: {e}"));
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "measuring a startup profile failed");
                log.kiln(format!("no startup profile: {e}"));
                None
            }
        }
    }

    fn check_outcome(&self, outcome: &RunOutcome) -> Result<(), Failure> {
        let limits = &self.config.limits;
        match outcome {
            RunOutcome::Exited(0) => Ok(()),
            RunOutcome::Exited(code) => Err(Failure::Customer(format!(
                "the compiler exited with status {code}"
            ))),
            RunOutcome::Signaled(signal) => Err(Failure::Customer(format!(
                "the build was killed by signal {signal}"
            ))),
            RunOutcome::TimedOut => Err(Failure::Customer(format!(
                "the build exceeded its time limit of {} s",
                limits.wall_time.as_secs()
            ))),
            RunOutcome::IdleTimedOut => Err(Failure::Customer(format!(
                "the build printed nothing for {} s and was stopped",
                limits.no_output.unwrap_or_default().as_secs()
            ))),
            RunOutcome::OutOfMemory => Err(Failure::Customer(format!(
                "the build ran out of memory (limit {} MiB)",
                limits.memory_bytes / (1024 * 1024)
            ))),
        }
    }
}
