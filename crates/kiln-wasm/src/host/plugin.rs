//! A compiled plugin, linked against the host functions.

use super::engine::BaseLinker;
use super::{HostError, HostState, not_implemented};
use wasmtime::{ExternType, InstancePre, Module};

/// A compiled plugin, linked and ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    pre: InstancePre<HostState>,
}

impl Plugin {
    pub(super) fn link(base: &BaseLinker, module: Module) -> Result<Self, HostError> {
        // A plugin of a known SDK imports nothing else: it links against the
        // shared linker as it is, without looking at its imports first.
        if let Ok(pre) = base.linker.instantiate_pre(&module) {
            return Ok(Self { pre });
        }
        let unknown: Vec<_> = module
            .imports()
            .filter(|import| !base.defined.contains(&(import.module(), import.name())))
            .filter_map(|import| match import.ty() {
                ExternType::Func(ty) => Some((import.module(), import.name(), ty)),
                _ => None,
            })
            .collect();
        let mut linker = base.linker.clone();
        for (module_name, name, ty) in unknown {
            let import = (module_name.to_owned(), name.to_owned());
            linker
                .func_new(module_name, name, ty, move |_, _, _| {
                    Err(not_implemented(&import.0, &import.1))
                })
                .map_err(|e| HostError::Setup(format!("{e:#}")))?;
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::Compile(format!("{e:#}")))?;
        Ok(Self { pre })
    }

    /// The compiled wasmtime module.
    pub fn module(&self) -> &Module {
        self.pre.module()
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}
