//! kiln-trial runs customer modules, and is the only place kiln does. A
//! module is untrusted code: every run of one (a trial of `POST
//! /version/{id}/try`, the smoke requests that decide whether `wasm-opt`'s
//! output is kept, Wizer pre-initialization, the startup profile) happens
//! in a `kiln wasm-child` process of its own, in the build sandbox, as the
//! sandbox user, with memory, time and process limits. wasmtime's fuel,
//! epoch and memory limits are the second wall inside it.
//!
//! Native code only ever comes from kiln's trusted side: a child compiles
//! modules for its own use, but the `.cwasm` a trial loads is compiled by
//! the server (which runs none of the module's code) and never leaves the
//! child's scratch directory.
//!
//! Layout:
//! - [`job`]: the contract between kiln and a child: jobs, files, outcomes.
//! - [`child`]: what `kiln wasm-child DIR` does inside the sandbox.
//! - [`runner`]: runs one job in the sandbox and reads its outcome.
//! - [`trials`]: the server's trials: admission, compilation, the cache.

pub mod child;
pub mod job;
pub mod runner;
pub mod trials;

pub use job::{Job, Outcome};
pub use runner::{Runner, RunnerError};
pub use trials::{Module, Trials};
