//! Helpers for kiln's tests only (a dev-dependency, never linked into
//! kiln): source archives built in memory, as customers upload them and
//! as an attacker would, and a sandbox whose runs end as a test scripts
//! them.

pub mod archive;
pub mod sandbox;
