//! Is this module a proxy-wasm plugin? It must validate, export an ABI
//! version of 0.2.x, the context constructor, a memory allocator, and the
//! callback of every phase it declares.

use kiln_domain::Phase;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// What the check learned about a module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleReport {
    /// The module's length, in bytes.
    pub size: usize,
    /// sha256 of the module's bytes, in hex.
    pub sha256_hex: String,
    /// e.g. `0_2_1`.
    pub abi_version: String,
    /// The name of every export, in the module's order.
    pub exports: Vec<String>,
    /// `module.name` of every import.
    pub imports: Vec<String>,
}

/// Why a module is not a proxy-wasm plugin kiln can run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// It does not validate or parse, with the parser's message.
    #[error("the module is not valid WebAssembly: {0}")]
    Invalid(String),
    /// Exports a host needs that it lacks, each described for the reader.
    #[error("the module does not export {}", .0.join(", "))]
    MissingExports(Vec<String>),
}

const ALLOCATORS: [&str; 2] = ["proxy_on_memory_allocate", "malloc"];
const ABI_PREFIX: &str = "proxy_abi_version_0_2_";

/// Validates `bytes` and checks the exports a host needs for `phases`.
pub fn check_module(bytes: &[u8], phases: &[Phase]) -> Result<ModuleReport, CheckError> {
    let mut validator = Validator::new_with_features(WasmFeatures::default());
    validator
        .validate_all(bytes)
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    let (exports, imports) = names(bytes)?;
    let has = |name: &str| exports.iter().any(|e| e == name);

    let mut missing = Vec::new();
    let abi_version = exports
        .iter()
        .find_map(|e| e.strip_prefix(ABI_PREFIX))
        .map(|v| format!("0_2_{v}"));
    if abi_version.is_none() {
        missing.push(format!("{ABI_PREFIX}* (the proxy-wasm ABI version)"));
    }
    if !has("proxy_on_context_create") {
        missing.push("proxy_on_context_create".into());
    }
    if !ALLOCATORS.iter().any(|a| has(a)) {
        missing.push("proxy_on_memory_allocate or malloc (a memory allocator)".into());
    }
    for phase in phases {
        if !has(phase.abi_export()) {
            missing.push(format!(
                "{} (for the declared phase {phase})",
                phase.abi_export()
            ));
        }
    }
    if !missing.is_empty() {
        return Err(CheckError::MissingExports(missing));
    }
    Ok(ModuleReport {
        size: bytes.len(),
        sha256_hex: hex::encode(Sha256::digest(bytes)),
        abi_version: abi_version.unwrap_or_default(),
        exports,
        imports,
    })
}

fn names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), CheckError> {
    let (mut exports, mut imports) = (Vec::new(), Vec::new());
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| CheckError::Invalid(e.to_string()))? {
            Payload::ExportSection(reader) => {
                for export in reader {
                    exports.push(
                        export
                            .map_err(|e| CheckError::Invalid(e.to_string()))?
                            .name
                            .to_owned(),
                    );
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| CheckError::Invalid(e.to_string()))?;
                    imports.push(format!("{}.{}", import.module, import.name));
                }
            }
            _ => {}
        }
    }
    Ok((exports, imports))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with the given function exports, in the binary format.
    fn module(exports: &[&str]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // type section: one type () -> ()
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        // function section: one function of type 0
        m.extend_from_slice(&[3, 2, 1, 0]);
        let mut section = vec![exports.len() as u8];
        for name in exports {
            section.push(name.len() as u8);
            section.extend_from_slice(name.as_bytes());
            section.extend_from_slice(&[0, 0]);
        }
        m.push(7);
        m.push(section.len() as u8);
        m.extend_from_slice(&section);
        // code section: one empty body
        m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
        m
    }

    const BASE: [&str; 3] = [
        "proxy_abi_version_0_2_1",
        "proxy_on_context_create",
        "proxy_on_memory_allocate",
    ];

    #[test]
    fn a_complete_module_passes() {
        let bytes = module(&[&BASE[..], &["proxy_on_request_headers"]].concat());
        let report = check_module(&bytes, &[Phase::RequestHeaders]).unwrap();
        assert_eq!(report.abi_version, "0_2_1");
        assert_eq!(report.size, bytes.len());
    }

    #[test]
    fn a_missing_phase_callback_is_named() {
        let bytes = module(&[&BASE[..], &["proxy_on_request_headers"]].concat());
        let err =
            check_module(&bytes, &[Phase::RequestHeaders, Phase::ResponseHeaders]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("proxy_on_response_headers")
                && !text.contains("proxy_on_request_headers"),
            "{text}"
        );
    }

    #[test]
    fn the_abi_and_allocator_are_required() {
        let err = check_module(&module(&["proxy_on_context_create"]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("proxy_abi_version_0_2_") && err.contains("allocator"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            check_module(b"\0asm\x01\0\0\0\x99", &[]),
            Err(CheckError::Invalid(_))
        ));
        assert!(matches!(
            check_module(b"not wasm", &[]),
            Err(CheckError::Invalid(_))
        ));
    }
}
