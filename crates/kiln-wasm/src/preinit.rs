//! Pre-initialization with Wizer: a module that exports `wizer.initialize`
//! (or `wizer-initialize`) has that function run once at build time, in
//! kiln's host with the usual limits, and its memory and globals are
//! snapshotted into a new module, so no cold start pays for it again.

use crate::host::{HostEngine, HostError, HostState};
use crate::trial::TrialLimits;
use wasmparser::{Parser, Payload};
use wasmtime::{Instance, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

const INIT_EXPORTS: [&str; 2] = ["wizer.initialize", "wizer-initialize"];

/// The init function a module exports, if any.
pub fn init_export(wasm: &[u8]) -> Option<&'static str> {
    for payload in Parser::new(0).parse_all(wasm) {
        if let Ok(Payload::ExportSection(reader)) = payload {
            for export in reader.into_iter().flatten() {
                if let Some(name) = INIT_EXPORTS.iter().find(|n| **n == export.name) {
                    return Some(name);
                }
            }
        }
    }
    None
}

struct Snapshot<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
}

impl InstanceState for Snapshot<'_> {
    async fn global_get(&mut self, name: &str, _hint: wasmparser::ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("wizer names an exported global");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("a global of type {other:?} cannot be snapshotted"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("wizer names an exported memory");
        contents(memory.data(&*self.store))
    }
}

fn setup(e: impl std::fmt::Display) -> HostError {
    HostError::Trap(format!("pre-initialization: {e:#}"))
}

/// Runs the module's init function and returns the snapshotted module, or
/// `None` when it exports none.
pub fn preinitialize(
    engine: &HostEngine,
    wasm: &[u8],
    limits: &TrialLimits,
) -> Result<Option<Vec<u8>>, HostError> {
    let Some(init) = init_export(wasm) else {
        return Ok(None);
    };
    let mut wizer = Wizer::new();
    wizer.init_func(init);
    let (cx, instrumented) = wizer.instrument(wasm).map_err(setup)?;
    let plugin = engine.compile(&instrumented)?;
    let mut store = engine.store(
        |store_limits| HostState::new(store_limits, Vec::new()),
        limits,
    )?;
    let instance = plugin
        .instance_pre()
        .instantiate(&mut store)
        .map_err(setup)?;
    for name in ["_initialize", init] {
        if let Some(func) = instance.get_func(&mut store, name) {
            func.call(&mut store, &[], &mut [])
                .map_err(|e| HostError::Trap(format!("{name}: {e:#}")))?;
        }
    }
    let mut state = Snapshot {
        store: &mut store,
        instance,
    };
    let snapshot = futures::executor::block_on(wizer.snapshot(&cx, &mut state)).map_err(setup)?;
    Ok(Some(snapshot))
}
