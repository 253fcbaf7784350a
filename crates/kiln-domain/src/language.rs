//! Source languages kiln can build.

use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A plugin's source language. Each one has a toolchain in kiln-build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Rust: a `cdylib` crate, built with
    /// `cargo build --release --target wasm32-wasip1`.
    Rust,
}

impl Language {
    /// Every language kiln builds.
    pub const ALL: [Language; 1] = [Language::Rust];

    /// Its name on the wire and in the store (`rust`).
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
        }
    }

    /// Parses the name [`Language::as_str`] gives, surrounding spaces
    /// trimmed.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Language::ALL
            .into_iter()
            .find(|l| l.as_str() == raw.trim())
            .ok_or_else(|| {
                ValidationError::new(format!("unknown plugin_language {raw:?}; supported: rust"))
            })
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
