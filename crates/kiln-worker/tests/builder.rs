//! A builder against a real server (kiln-server's router on a free port,
//! SQLite and a blob directory in a temp dir), with a toolchain scripted
//! for the test and a sandbox whose runs end as scripted
//! (`kiln_testkit::sandbox`): what a builder does when kiln's own code
//! panics inside a build, when the sandbox kills a build, when a
//! post-build step fails, and how it keeps a short lease.

use kiln_build::{Prepared, Toolchain, ToolchainError};
use kiln_domain::{BuildId, BuildState, Language, OwnerId, Phases};
use kiln_sandbox::{GUEST_SCRATCH, RunOutcome, Sandbox, SandboxCommand};
use kiln_server::{AppState, Server, ServerConfig};
use kiln_store::{BlobStore, MetaStore, NewBuild};
use kiln_testkit::sandbox::{Run, ScriptedSandbox};
use kiln_worker::{Client, Pipeline, PipelineConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WORKER_TOKEN: &str = "worker-token-for-tests";

/// Panics while preparing the first build it is given (a bug in kiln's
/// own code); "compiles" every later one by copying the module the
/// archive holds.
#[derive(Debug, Default)]
struct PanicsOnce {
    prepared: AtomicUsize,
    /// Prepares without panicking, taking this long, when set.
    slow: Option<Duration>,
}

#[async_trait::async_trait]
impl Toolchain for PanicsOnce {
    fn language(&self) -> Language {
        Language::Rust
    }

    async fn prepare(&self, _scratch: &Path, _src: &Path) -> Result<Prepared, ToolchainError> {
        let first = self.prepared.fetch_add(1, Ordering::SeqCst) == 0;
        match self.slow {
            Some(takes) => tokio::time::sleep(takes).await,
            None if first => panic!("a bug in kiln's own code"),
            None => {}
        }
        Ok(Prepared {
            project: "src".into(),
            mounts: Vec::new(),
            log: String::new(),
        })
    }

    fn build_command(&self, _prepared: &Prepared) -> SandboxCommand {
        let guest = Path::new(GUEST_SCRATCH);
        SandboxCommand {
            program: "/bin/cp".into(),
            args: vec![
                guest.join("src/plugin.wasm").display().to_string(),
                guest.join("out.wasm").display().to_string(),
            ],
            env: Vec::new(),
            cwd: guest.to_owned(),
            mounts: Vec::new(),
            output_tap: None,
        }
    }

    fn find_output(
        &self,
        _scratch: &Path,
        _prepared: &Prepared,
    ) -> Result<PathBuf, ToolchainError> {
        Ok("out.wasm".into())
    }
}

/// The smallest module that passes kiln's proxy-wasm check for the
/// `request_headers` phase.
fn plugin() -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction,
        MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let i32 = ValType::I32;
    let mut types = TypeSection::new();
    types.ty().function([], []);
    types.ty().function([i32, i32], []);
    types.ty().function([i32], [i32]);
    types.ty().function([i32, i32], [i32]);
    types.ty().function([i32, i32, i32], [i32]);
    // (export name, type, the i32 it returns)
    let exports: [(&str, u32, Option<i32>); 6] = [
        ("proxy_abi_version_0_2_1", 0, None),
        ("proxy_on_context_create", 1, None),
        ("proxy_on_memory_allocate", 2, Some(1024)),
        ("proxy_on_vm_start", 3, Some(1)),
        ("proxy_on_configure", 3, Some(1)),
        ("proxy_on_request_headers", 4, Some(0)),
    ];
    let (mut functions, mut code, mut names) = (
        FunctionSection::new(),
        CodeSection::new(),
        ExportSection::new(),
    );
    for (index, (name, ty, result)) in exports.into_iter().enumerate() {
        functions.function(ty);
        let mut body = Function::new([]);
        if let Some(value) = result {
            body.instruction(&Instruction::I32Const(value));
        }
        body.instruction(&Instruction::End);
        code.function(&body);
        names.export(name, ExportKind::Func, index as u32);
    }
    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    names.export("memory", ExportKind::Memory, 0);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memory)
        .section(&names)
        .section(&code);
    module.finish()
}

/// A `.tar.gz` holding `plugin.wasm`.
fn archive(module: &[u8]) -> Vec<u8> {
    kiln_testkit::archive::tar_gz(&[("plugin.wasm", module)])
}

struct TestServer {
    meta: MetaStore,
    blobs: BlobStore,
    base: String,
    owner: OwnerId,
    app: kiln_domain::AppId,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A server on a free port that starts a build at most `max_attempts`
    /// times.
    async fn start(max_attempts: i32) -> Self {
        Self::start_with(max_attempts, kiln_server::config::DEFAULT_LEASE).await
    }

    /// As [`TestServer::start`], granting leases of `lease`, reaped each second.
    async fn start_with(max_attempts: i32, lease: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let meta = MetaStore::connect(&url).await.unwrap();
        let blobs = BlobStore::local(&dir.path().join("blobs")).unwrap();
        let mut config = ServerConfig::new(kiln_server::auth::hash_token(WORKER_TOKEN));
        config.max_attempts = max_attempts;
        config.lease = lease;
        config.reap_interval = Duration::from_secs(1);
        let key = kiln_wasm::signing::new_signing_key().unwrap();
        let artifacts = kiln_server::artifacts::Precompiler::new(&[], key).unwrap();
        let state = AppState::new(meta.clone(), blobs.clone(), config, artifacts);
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), state)
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(server.run(async move { stopped.cancelled().await }));
        let owner = meta.create_owner("tests").await.unwrap();
        let app = meta.create_application(owner, "app", "").await.unwrap().id;
        Self {
            meta,
            blobs,
            base,
            owner,
            app,
            stop,
            _dir: dir,
        }
    }

    /// Queues a build of `source`, as an upload does.
    async fn queue(&self, version: &str, source: Vec<u8>) -> BuildId {
        let id = BuildId::new();
        let source_location = kiln_store::keys::source(self.app, id, "tar.gz");
        self.blobs
            .put(&source_location, source.into())
            .await
            .unwrap();
        let new = NewBuild {
            id,
            application_id: self.app,
            owner_id: self.owner,
            version: version.parse().unwrap(),
            language: Language::Rust,
            phases: Phases::parse_json(r#"["request_headers"]"#).unwrap(),
            conf: String::new(),
            notes: String::new(),
            options: Default::default(),
            source_location,
        };
        self.meta.create_build(&new).await.unwrap().id
    }

    async fn wait_until_finished(
        &self,
        id: BuildId,
        deadline: Duration,
    ) -> kiln_domain::VersionBuild {
        let until = Instant::now() + deadline;
        loop {
            let build = self.meta.get_build(self.owner, id).await.unwrap();
            if build.state.is_terminal() {
                return build;
            }
            assert!(Instant::now() < until, "build {id} still {}", build.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One builder against `server`, with the toolchain that panics once and
/// no sandbox; stopped with the returned token.
struct Builder {
    toolchain: Arc<PanicsOnce>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    scratch: tempfile::TempDir,
}

impl Builder {
    fn start(server: &TestServer) -> Self {
        Self::start_with(server, PanicsOnce::default())
    }

    fn start_with(server: &TestServer, toolchain: PanicsOnce) -> Self {
        Self::start_scripted(server, toolchain, PipelineConfig::default(), [])
    }

    /// A builder whose sandbox runs end as `script` says, run by run.
    fn start_scripted(
        server: &TestServer,
        toolchain: PanicsOnce,
        config: PipelineConfig,
        script: impl IntoIterator<Item = Run>,
    ) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let toolchain = Arc::new(toolchain);
        let sandbox: Arc<dyn Sandbox> =
            Arc::new(ScriptedSandbox::new(scratch.path().to_owned(), script));
        // No kiln binary for the module's runs here: the startup profile is
        // left out (the log says why) and the build still succeeds.
        let pipeline = Pipeline::new(
            config,
            sandbox,
            vec![toolchain.clone()],
            scratch.path().join("no-kiln-binary"),
        );
        let client = Client::new(&server.base, WORKER_TOKEN).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(kiln_worker::run_builders(
            Arc::new(pipeline),
            client,
            1,
            stop.clone(),
            Duration::from_secs(5),
        ));
        Self {
            toolchain,
            stop,
            task,
            scratch,
        }
    }

    /// Stops the builder and checks it left no scratch directory.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        assert_eq!(
            std::fs::read_dir(self.scratch.path()).unwrap().count(),
            0,
            "every build's scratch directory is gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_panics_ends_crashed_and_the_builder_goes_on() {
    // One attempt: the crash is final, so the build stays `crashed`.
    let server = TestServer::start(1).await;
    let source = archive(&plugin());
    let first = server.queue("1.0.0", source.clone()).await;
    let second = server.queue("1.0.1", source).await;
    // One builder: the same one must build both.
    let builder = Builder::start(&server);

    let crashed = server
        .wait_until_finished(first, Duration::from_secs(60))
        .await;
    assert_eq!(crashed.state, BuildState::Crashed);
    let error = crashed.error.unwrap_or_default();
    assert!(
        error.contains("panicked") && error.contains("a bug in kiln's own code"),
        "{error}"
    );

    let succeeded = server
        .wait_until_finished(second, Duration::from_secs(120))
        .await;
    assert_eq!(
        succeeded.state,
        BuildState::Succeeded,
        "{:?}",
        succeeded.error
    );
    assert_eq!(builder.toolchain.prepared.load(Ordering::SeqCst), 2);
    let version = server.meta.get_version(server.owner, second).await.unwrap();
    assert_eq!(version.binary_size, plugin().len() as i64);
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_panics_is_retried() {
    let server = TestServer::start(3).await;
    let build = server.queue("1.0.0", archive(&plugin())).await;
    let builder = Builder::start(&server);
    let built = server
        .wait_until_finished(build, Duration::from_secs(120))
        .await;
    assert_eq!(built.state, BuildState::Succeeded, "{:?}", built.error);
    assert_eq!(built.attempt, 2, "the crashed attempt released its lease");
    builder.stop().await;
}

/// A lease shorter than the builder's own heartbeat period (10 s) holds:
/// the builder beats every third of the lease the server granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_is_kept_by_beating_faster() {
    let server = TestServer::start_with(1, Duration::from_secs(3)).await;
    let build = server.queue("1.0.0", archive(&plugin())).await;
    let slow = PanicsOnce {
        slow: Some(Duration::from_secs(7)),
        ..PanicsOnce::default()
    };
    let builder = Builder::start_with(&server, slow);
    let built = server
        .wait_until_finished(build, Duration::from_secs(60))
        .await;
    assert_eq!(built.state, BuildState::Succeeded, "{:?}", built.error);
    assert_eq!(built.attempt, 1, "the lease never expired");
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_the_sandbox_kills_for_memory_fails_and_says_why() {
    let server = TestServer::start(3).await;
    let build = server.queue("1.0.0", archive(&plugin())).await;
    let oom = [Run::ends(RunOutcome::OutOfMemory)];
    let builder = Builder::start_scripted(&server, lenient(), PipelineConfig::default(), oom);
    let failed = server
        .wait_until_finished(build, Duration::from_secs(60))
        .await;
    assert_eq!(
        (failed.state, failed.attempt),
        (BuildState::Failed, 1),
        "the customer's build is at fault: failed, not retried"
    );
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("ran out of memory"), "{error}");
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_times_out_fails_with_its_limit() {
    let server = TestServer::start(3).await;
    let build = server.queue("1.0.0", archive(&plugin())).await;
    let slow = [Run::ends(RunOutcome::TimedOut)];
    let builder = Builder::start_scripted(&server, lenient(), PipelineConfig::default(), slow);
    let failed = server
        .wait_until_finished(build, Duration::from_secs(60))
        .await;
    assert_eq!(failed.state, BuildState::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("exceeded its time limit"), "{error}");
    builder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_wasm_opt_keeps_the_module_as_compiled() {
    let server = TestServer::start(3).await;
    let build = server.queue("1.0.0", archive(&plugin())).await;
    let config = PipelineConfig {
        wasm_opt: Some("/usr/bin/wasm-opt".into()),
        ..PipelineConfig::default()
    };
    // The compile runs; wasm-opt, the next run, crashes.
    let script = [
        Run::Real,
        Run::Ends {
            outcome: RunOutcome::Signaled(11),
            log: "wasm-opt: segmentation fault".into(),
        },
    ];
    let builder = Builder::start_scripted(&server, lenient(), config, script);
    let built = server
        .wait_until_finished(build, Duration::from_secs(60))
        .await;
    assert_eq!(built.state, BuildState::Succeeded, "{:?}", built.error);
    let version = server.meta.get_version(server.owner, build).await.unwrap();
    assert_eq!(
        version.binary_size,
        plugin().len() as i64,
        "the module is kept as compiled"
    );
    let logs = server.blobs.get(&version.logs_location).await.unwrap();
    let logs = String::from_utf8_lossy(&logs);
    assert!(logs.contains("wasm-opt result not used"), "{logs}");
    builder.stop().await;
}

/// A toolchain that never panics.
fn lenient() -> PanicsOnce {
    PanicsOnce {
        slow: Some(Duration::ZERO),
        ..PanicsOnce::default()
    }
}
