//! Pre-initialization with Wizer: a module that exports `wizer.initialize`
//! (or `wizer-initialize`) has that function run once at build time, in
//! kiln's host with the usual limits, and its memory and globals are
//! snapshotted into a new module, so no cold start pays for it again.

use crate::host::{HostEngine, HostError, HostState, InstanceLimits};
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

/// What Wizer reads from the initialized instance. Its trait cannot fail,
/// so what cannot be read is kept in `refused` (and a placeholder value
/// handed back), and the snapshot is then refused: the module is the
/// customer's, and nothing in it may panic the builder.
struct Snapshot<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    refused: Option<String>,
}

impl Snapshot<'_> {
    fn refuse(&mut self, reason: String) {
        self.refused.get_or_insert(reason);
    }
}

impl InstanceState for Snapshot<'_> {
    async fn global_get(&mut self, name: &str, _hint: wasmparser::ValType) -> SnapshotVal {
        let Some(global) = self.instance.get_global(&mut *self.store, name) else {
            self.refuse(format!("the module exports no global {name:?}"));
            return SnapshotVal::I32(0);
        };
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => {
                self.refuse(format!(
                    "the global {name:?} holds {other:?}, which cannot be snapshotted"
                ));
                SnapshotVal::I32(0)
            }
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => {
                self.refuse(format!("the module exports no memory {name:?}"));
                contents(&[]);
            }
        }
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
    limits: &InstanceLimits,
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
        refused: None,
    };
    let snapshot = futures::executor::block_on(wizer.snapshot(&cx, &mut state)).map_err(setup)?;
    if let Some(reason) = state.refused {
        return Err(setup(reason));
    }
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        ConstExpr, ExportKind, ExportSection, GlobalSection, GlobalType, HeapType, Module, ValType,
    };

    /// A module exporting a funcref global `table_ref` (Wizer refuses a
    /// mutable one up front; this one reaches the snapshot's reader).
    fn module_with_a_funcref_global() -> Vec<u8> {
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::FUNCREF,
                mutable: false,
                shared: false,
            },
            &ConstExpr::ref_null(HeapType::FUNC),
        );
        let mut exports = ExportSection::new();
        exports.export("table_ref", ExportKind::Global, 0);
        let mut module = Module::new();
        module.section(&globals).section(&exports);
        module.finish()
    }

    #[test]
    fn what_cannot_be_snapshotted_is_refused_not_a_panic() {
        let engine = HostEngine::new().unwrap();
        let plugin = engine.compile(&module_with_a_funcref_global()).unwrap();
        let limits = InstanceLimits::default();
        let mut store = engine
            .store(|l| HostState::new(l, Vec::new()), &limits)
            .unwrap();
        let instance = plugin.instance_pre().instantiate(&mut store).unwrap();
        let mut state = Snapshot {
            store: &mut store,
            instance,
            refused: None,
        };
        let hint = wasmparser::ValType::I32;
        futures::executor::block_on(state.global_get("table_ref", hint));
        assert!(
            state
                .refused
                .as_deref()
                .is_some_and(|r| r.contains("cannot be snapshotted")),
            "{:?}",
            state.refused
        );
        futures::executor::block_on(state.global_get("missing", hint));
        futures::executor::block_on(
            state.memory_contents("missing", |bytes| assert!(bytes.is_empty())),
        );
        // The first reason is the one reported.
        assert!(state.refused.unwrap().contains("table_ref"));
    }
}
