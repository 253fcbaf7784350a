//! The proxy-wasm host against real filters built from the SDK: the
//! examples and a misbehaving fixture.

use kiln_wasm::{
    EngineSettings, HostEngine, HostError, Scenario, ScenarioRequest, TrialLimits, TrialRequest,
    run_scenario, run_trial,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds a filter crate for wasm32-wasip1 (once per test process).
fn build(dir: &str) -> Vec<u8> {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    let manifest = repo().join(dir).join("Cargo.toml");
    let target = repo().join("target/filters");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {dir} failed");
    let name = Path::new(dir)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('-', "_");
    std::fs::read(target.join(format!("wasm32-wasip1/release/{name}.wasm"))).unwrap()
}

/// Loads a `.cwasm` this test compiled (or cut short on purpose).
fn load(engine: &HostEngine, cwasm: &[u8]) -> Result<kiln_wasm::Plugin, HostError> {
    // SAFETY: the bytes are this process's own precompilation output, or a
    // prefix of it that wasmtime's checks refuse.
    unsafe { engine.load_trusted(cwasm) }
}

fn load_file(engine: &HostEngine, path: &Path) -> Result<kiln_wasm::Plugin, HostError> {
    // SAFETY: as in `load`; the test's files do not change while mapped.
    unsafe { engine.load_trusted_file(path) }
}

fn engine() -> HostEngine {
    HostEngine::new().unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn add_header_adds_headers_and_reads_its_configuration() {
    let engine = engine();
    let plugin = engine.compile(&build("examples/add-header")).unwrap();
    let mut request = TrialRequest::get("/hello");
    request.conf = "from-test".into();
    request
        .headers
        .push(("User-Agent".into(), "kiln-test".into()));
    request.upstream.body = "upstream body".into();
    let result = run_trial(&engine, &plugin, &request, &TrialLimits::default()).unwrap();
    let forwarded = result.forwarded.expect("the request goes upstream");
    assert_eq!(
        header(&forwarded.headers, "x-kiln-filter"),
        Some("add-header")
    );
    assert_eq!(header(&forwarded.headers, "user-agent"), Some("kiln-test"));
    let response = result.response.expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(header(&response.headers, "x-powered-by"), Some("kiln"));
    assert_eq!(header(&response.headers, "x-kiln-conf"), Some("from-test"));
    assert_eq!(response.body, "upstream body");
    assert!(
        result
            .logs
            .iter()
            .any(|l| l.level == "info" && l.message.contains("response headers added")),
        "{:?}",
        result.logs
    );
}

#[test]
fn deny_path_answers_locally() {
    let engine = engine();
    let plugin = engine.compile(&build("examples/deny-path")).unwrap();
    let result = run_trial(
        &engine,
        &plugin,
        &TrialRequest::get("/admin/users"),
        &TrialLimits::default(),
    )
    .unwrap();
    let local = result.local_response.expect("a local response");
    assert_eq!(local.status, 403);
    assert_eq!(local.body, r#"{"error":"forbidden"}"#);
    assert_eq!(
        header(&local.headers, "content-type"),
        Some("application/json")
    );
    assert!(result.forwarded.is_none());
    // As in Envoy, the local reply goes through the response callbacks.
    let response = result.response.expect("the client gets the local reply");
    assert_eq!(response.status, 403);
    assert_eq!(header(&response.headers, "x-deny-path"), Some("checked"));
    assert_eq!(header(&response.headers, "content-length"), Some("21"));
    let passed = run_trial(
        &engine,
        &plugin,
        &TrialRequest::get("/public"),
        &TrialLimits::default(),
    )
    .unwrap();
    assert!(passed.local_response.is_none());
    assert_eq!(passed.response.unwrap().status, 200);
}

#[test]
fn an_infinite_loop_is_stopped_by_fuel_and_by_time() {
    let engine = engine();
    let plugin = engine
        .compile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let fuel = TrialLimits {
        fuel: 50_000_000,
        ..TrialLimits::default()
    };
    let started = Instant::now();
    let err = run_trial(&engine, &plugin, &TrialRequest::get("/loop"), &fuel).unwrap_err();
    assert!(matches!(err, HostError::OutOfFuel(_)), "{err}");
    let time = TrialLimits {
        fuel: u64::MAX,
        wall: Duration::from_millis(200),
        ..TrialLimits::default()
    };
    let err = run_trial(&engine, &plugin, &TrialRequest::get("/loop"), &time).unwrap_err();
    assert!(matches!(err, HostError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn what_a_plugin_hands_the_host_is_bounded() {
    let engine = engine();
    let plugin = engine
        .compile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let limits = TrialLimits {
        wall: Duration::from_secs(30),
        fuel: u64::MAX,
        host_bytes: 8 << 20,
        ..TrialLimits::default()
    };
    for path in ["/hoard", "/chatter"] {
        let err = run_trial(&engine, &plugin, &TrialRequest::get(path), &limits).unwrap_err();
        assert!(
            matches!(err, HostError::HostMemory(n) if n == 8 << 20),
            "{path}: {err}"
        );
    }
    // Within the budget, the same plugin runs as before.
    let fine = run_trial(&engine, &plugin, &TrialRequest::get("/shared"), &limits).unwrap();
    assert!(fine.forwarded.is_some());
}

#[test]
fn without_fuel_an_infinite_loop_is_stopped_by_time() {
    let edge = HostEngine::edge().unwrap();
    assert!(!edge.meters_fuel());
    let wasm = build("tests/fixtures/filters/misbehaving");
    let plugin = load(&edge, &edge.precompile(&wasm).unwrap()).unwrap();
    let limits = TrialLimits {
        fuel: 1,
        wall: Duration::from_millis(200),
        ..TrialLimits::default()
    };
    let started = Instant::now();
    let err = run_trial(&edge, &plugin, &TrialRequest::get("/loop"), &limits).unwrap_err();
    assert!(matches!(err, HostError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn an_unimplemented_host_function_is_named() {
    let engine = engine();
    let plugin = engine
        .compile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let err = run_trial(
        &engine,
        &plugin,
        &TrialRequest::get("/unknown"),
        &TrialLimits::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("env.proxy_kiln_does_not_exist is not implemented"),
        "{err}"
    );
    // Part of the ABI the SDK links, but not of kiln's host.
    let err = run_trial(
        &engine,
        &plugin,
        &TrialRequest::get("/grpc"),
        &TrialLimits::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("env.proxy_grpc_call is not implemented"),
        "{err}"
    );
}

#[test]
fn an_instance_never_sees_what_an_earlier_one_left_in_memory() {
    let engine = engine();
    let cwasm = engine
        .precompile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let request = TrialRequest::get("/remember");
    // The pool reuses a freed slot in place, for the same plugin and for
    // another one: each instance must start from the module's own image.
    for _plugin in 0..2 {
        let plugin = load(&engine, &cwasm).unwrap();
        for _instance in 0..3 {
            let result = run_trial(&engine, &plugin, &request, &TrialLimits::default()).unwrap();
            let forwarded = result.forwarded.expect("passed on");
            assert_eq!(header(&forwarded.headers, "x-data"), Some("1"));
            assert_eq!(header(&forwarded.headers, "x-memory"), Some("0"));
        }
    }
}

#[test]
fn memory_is_limited() {
    let engine = engine();
    let plugin = engine
        .compile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let limits = TrialLimits {
        memory_bytes: 16 << 20,
        ..TrialLimits::default()
    };
    let err = run_trial(&engine, &plugin, &TrialRequest::get("/alloc"), &limits).unwrap_err();
    assert!(matches!(err, HostError::Trap(_)), "{err}");
}

#[test]
fn http_calls_shared_data_properties_and_stdout() {
    let engine = engine();
    let plugin = engine
        .compile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let mut request = TrialRequest::get("/call");
    request.upstream.status = 201;
    request.upstream.body = "auth ok".into();
    let result = run_trial(&engine, &plugin, &request, &TrialLimits::default()).unwrap();
    let local = result
        .local_response
        .expect("answered from the call's response");
    assert_eq!((local.status, local.body.as_str()), (200, "auth ok"));
    assert_eq!(header(&local.headers, "x-call-status"), Some("201"));

    let mut request = TrialRequest::get("/shared");
    request.method = "POST".into();
    let result = run_trial(&engine, &plugin, &request, &TrialLimits::default()).unwrap();
    let forwarded = result.forwarded.unwrap();
    assert_eq!(header(&forwarded.headers, "x-count"), Some("1"));
    assert_eq!(header(&forwarded.headers, "x-method"), Some("POST"));
    assert!(
        result
            .logs
            .iter()
            .any(|l| l.level == "stdout" && l.message == "stdout from the plugin"),
        "{:?}",
        result.logs
    );
}

#[test]
fn precompiled_modules_load_and_mismatches_are_refused() {
    let wasm = build("examples/add-header");
    let engine = HostEngine::edge().unwrap();
    let cwasm = engine.precompile(&wasm).unwrap();
    let plugin = load(&engine, &cwasm).unwrap();
    let result = run_trial(
        &engine,
        &plugin,
        &TrialRequest::get("/"),
        &TrialLimits::default(),
    )
    .unwrap();
    assert!(result.response.is_some());

    // Built for another CPU: refused, never loaded.
    let other = HostEngine::with_settings(
        &EngineSettings::edge(Some("aarch64-unknown-linux-gnu".into())),
        true,
    )
    .unwrap();
    let foreign = other.precompile(&wasm).unwrap();
    assert!(matches!(
        load(&engine, &foreign),
        Err(HostError::Incompatible(_))
    ));
    // Built with fuel metering, for kiln's own runs: refused by the edge's
    // engine, and the edge's artifact by kiln's.
    let metered = self::engine().precompile(&wasm).unwrap();
    match load(&engine, &metered) {
        Err(HostError::Incompatible(why)) => assert!(why.contains("fuel"), "{why}"),
        other => panic!("a fuel-metered .cwasm was not refused: {:?}", other.err()),
    }
    assert!(matches!(
        load(&self::engine(), &cwasm),
        Err(HostError::Incompatible(_))
    ));
    assert!(matches!(
        load(&engine, &wasm),
        Err(HostError::Incompatible(_))
    ));
    let mut corrupt = cwasm.clone();
    let at = corrupt.len() / 2;
    corrupt.truncate(at);
    assert!(load(&engine, &corrupt).is_err());

    // The same from files, as an edge server maps them.
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let plugin = load_file(&engine, &file("ok.cwasm", &cwasm)).unwrap();
    assert!(
        run_trial(
            &engine,
            &plugin,
            &TrialRequest::get("/"),
            &TrialLimits::default()
        )
        .unwrap()
        .response
        .is_some()
    );
    for (name, bytes) in [
        ("foreign.cwasm", &foreign[..]),
        ("plain.wasm", &wasm[..]),
        ("empty.cwasm", &[][..]),
    ] {
        let refused = load_file(&engine, &file(name, bytes));
        assert!(
            matches!(refused, Err(HostError::Incompatible(_))),
            "{name} was not refused"
        );
    }
}

#[test]
fn preinitialization_snapshots_the_init_work() {
    let engine = engine();
    let wasm = build("tests/fixtures/filters/heavy-init");
    assert_eq!(
        kiln_wasm::preinit::init_export(&wasm),
        Some("wizer.initialize")
    );
    let snapshot = kiln_wasm::preinit::preinitialize(&engine, &wasm, &TrialLimits::default())
        .unwrap()
        .expect("a snapshot");
    let (before, after) = (
        engine.compile(&wasm).unwrap(),
        engine.compile(&snapshot).unwrap(),
    );
    let limits = TrialLimits::default();
    let slow = run_trial(&engine, &before, &TrialRequest::get("/"), &limits).unwrap();
    let fast = run_trial(&engine, &after, &TrialRequest::get("/"), &limits).unwrap();
    let checksum = |r: &kiln_wasm::TrialResult| {
        header(&r.forwarded.as_ref().unwrap().headers, "x-table-checksum").map(str::to_owned)
    };
    assert!(checksum(&slow).is_some());
    assert_eq!(
        checksum(&slow),
        checksum(&fast),
        "the snapshot answers like the original"
    );
    // The init work is gone: counted in fuel (instructions), not time, so
    // a loaded machine cannot blur it. The original computes its table on
    // the first request and runs out of a budget the snapshot stays within.
    let budget = TrialLimits {
        fuel: 5_000_000,
        ..TrialLimits::default()
    };
    let request = TrialRequest::get("/");
    assert!(
        run_trial(&engine, &after, &request, &budget).is_ok(),
        "the snapshot answers within the budget"
    );
    assert!(
        matches!(
            run_trial(&engine, &before, &request, &budget),
            Err(HostError::OutOfFuel(_))
        ),
        "the original needs more for its first request"
    );
    assert!(kiln_wasm::smoke_equivalent(&engine, &before, &after, "").unwrap());
    // A module without an init export is left alone.
    assert!(
        kiln_wasm::preinit::preinitialize(&engine, &build("examples/deny-path"), &limits)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_edge_loads_only_artifacts_signed_for_it_by_the_key_it_trusts() {
    use kiln_wasm::signing::{self, SignatureError};
    let wasm = build("examples/add-header");
    let engine = HostEngine::edge().unwrap();
    let key = signing::new_signing_key().unwrap();
    let trusted = key.verifying_key();
    let cwasm = engine.precompile(&wasm).unwrap();
    let signed = signing::sign(&key, "v1", engine.target(), &cwasm);

    let (plugin, header) = engine.load_signed(&signed, &trusted, Some("v1")).unwrap();
    assert!(matches!(
        engine.load_signed(&signed, &trusted, Some("v2")),
        Err(HostError::Incompatible(why)) if why.contains("signed for version v1")
    ));
    assert_eq!(
        (header.version_id.as_str(), header.target.as_str()),
        ("v1", engine.target())
    );
    let result = run_trial(
        &engine,
        &plugin,
        &TrialRequest::get("/"),
        &TrialLimits::default(),
    );
    assert!(result.unwrap().response.is_some());

    let refused = |bytes: &[u8]| match engine.load_signed(bytes, &trusted, None) {
        Err(HostError::Unverified(why)) => why,
        other => panic!("loaded: {:?}", other.map(|(_, h)| h)),
    };
    let mut flipped = signed.clone();
    let at = flipped.len() - cwasm.len() / 2;
    flipped[at] ^= 0x01;
    assert_eq!(refused(&flipped), SignatureError::Altered);
    assert_eq!(refused(&cwasm), SignatureError::Unsigned);
    let other_server = signing::new_signing_key().unwrap();
    let foreign = signing::sign(&other_server, "v1", engine.target(), &cwasm);
    assert_eq!(refused(&foreign), SignatureError::Foreign);
    // Signed, but for another CPU: refused before wasmtime sees it.
    let arm = signing::sign(&key, "v1", "aarch64-unknown-linux-gnu", &cwasm);
    assert!(matches!(
        engine.load_signed(&arm, &trusted, None),
        Err(HostError::Incompatible(why)) if why.contains("aarch64")
    ));
}

fn scenario(conf: &str, requests: Vec<ScenarioRequest>) -> Scenario {
    Scenario {
        conf: conf.into(),
        requests,
        ..Scenario::default()
    }
}

#[test]
fn a_trap_keeps_the_logs_and_names_the_callback() {
    let engine = engine();
    let plugin = engine
        .compile(&build("tests/fixtures/filters/misbehaving"))
        .unwrap();
    let requests = vec![
        ScenarioRequest::get("/fine"),
        ScenarioRequest::get("/panic"),
    ];
    let (result, error) = run_scenario(
        &engine,
        &plugin,
        &scenario("", requests),
        &TrialLimits::default(),
    )
    .unwrap();
    assert!(matches!(error, Some(HostError::Trap(_))), "{error:?}");
    let failure = result.failure.expect("a failure");
    assert_eq!(failure.callback, "proxy_on_request_headers");
    assert_eq!(failure.request, Some(1));
    assert_eq!(result.exchanges.len(), 2);
    assert!(
        result.exchanges[0].response.is_some(),
        "the first went through"
    );
    let logs: Vec<_> = result.exchanges[1]
        .logs
        .iter()
        .map(|l| &l.message)
        .collect();
    assert!(logs.iter().any(|l| *l == "about to panic"), "{logs:?}");
}

#[test]
fn counters_shared_data_and_two_clusters_carry_across_a_scenario_file() {
    let engine = engine();
    let plugin = engine.compile(&build("examples/gatekeeper")).unwrap();
    let file = repo().join("examples/gatekeeper/scenario.json");
    let scenario: Scenario = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    scenario.check().unwrap();
    let (result, error) =
        run_scenario(&engine, &plugin, &scenario, &TrialLimits::default()).unwrap();
    assert!(error.is_none(), "{error:?}");
    let statuses: Vec<_> = result
        .exchanges
        .iter()
        .map(|e| e.response.as_ref().unwrap().status)
        .collect();
    assert_eq!(statuses, [401, 403, 200, 200, 429]);
    let clusters: Vec<_> = result.exchanges[2]
        .calls
        .iter()
        .map(|c| c.cluster.as_str())
        .collect();
    assert_eq!(clusters, ["auth", "quota"]);
    let metric = |name: &str| {
        result
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .value
    };
    assert_eq!(
        (metric("gatekeeper_allowed"), metric("gatekeeper_denied")),
        (2, 3)
    );
    assert_eq!(result.shared_data["gatekeeper.count"], "3");
}

#[test]
fn a_call_to_a_cluster_the_scenario_does_not_list_is_refused() {
    let engine = engine();
    let plugin = engine.compile(&build("examples/gatekeeper")).unwrap();
    let mut request = ScenarioRequest::get("/");
    request.headers.push(("authorization".into(), "x".into()));
    let mut only_auth = scenario("", vec![request]);
    only_auth
        .clusters
        .insert("nothing".into(), Default::default());
    let (result, _) = run_scenario(&engine, &plugin, &only_auth, &TrialLimits::default()).unwrap();
    let exchange = &result.exchanges[0];
    assert_eq!(
        exchange.response.as_ref().unwrap().status,
        503,
        "{exchange:?}"
    );
    assert!(exchange.calls.is_empty());
}

/// Remaining difference: kiln's clock stands still during a request and
/// moves only by the scenario's `after_ms` (Envoy's timer fires in real
/// time), so a timer that has not come due has not fired.
#[test]
fn time_moves_only_when_the_scenario_says() {
    let engine = engine();
    let plugin = engine.compile(&build("examples/ticker")).unwrap();
    let ticked = |after_ms: u64| {
        let mut first = ScenarioRequest::get("/");
        first.after_ms = after_ms;
        let (result, _) = run_scenario(
            &engine,
            &plugin,
            &scenario("", vec![first, ScenarioRequest::get("/")]),
            &TrialLimits::default(),
        )
        .unwrap();
        let response = result.exchanges[1].response.clone().unwrap();
        (
            header(&response.headers, "x-ticker-ticked").map(str::to_owned),
            header(&response.headers, "x-ticker-hits").map(str::to_owned),
            result.ticks,
        )
    };
    assert_eq!(ticked(0), (Some("0".into()), Some("2".into()), 0));
    assert_eq!(ticked(99), (Some("0".into()), Some("2".into()), 0));
    assert_eq!(ticked(100), (Some("1".into()), Some("2".into()), 1));
}

/// Remaining difference: one request on its own (the flags, or the API's
/// single-request body) answers every call out with its upstream stub,
/// whatever the cluster, where Envoy refuses a cluster it does not know.
#[test]
fn a_single_request_answers_every_call_out_with_its_upstream() {
    let engine = engine();
    let plugin = engine.compile(&build("examples/gatekeeper")).unwrap();
    let mut request = TrialRequest::get("/");
    request.headers.push(("authorization".into(), "x".into()));
    let result = run_trial(&engine, &plugin, &request, &TrialLimits::default()).unwrap();
    // Both calls got the upstream's 200: the request went on.
    assert!(result.forwarded.is_some(), "{result:?}");
}
