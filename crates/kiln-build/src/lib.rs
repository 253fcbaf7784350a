//! kiln-build turns an uploaded archive into a build the sandbox can run:
//! it unpacks the archive safely ([`archive`]), and for each language a
//! [`Toolchain`] checks the dependency policy, fetches dependencies outside
//! the sandbox without running customer code, describes the sandboxed
//! compile command and finds its output. It never spawns the sandbox
//! itself and holds no credentials.

pub mod archive;
pub mod rust;
pub mod toolchain;

pub use rust::{RustConfig, RustToolchain};
pub use toolchain::{Prepared, Toolchain, ToolchainError};
