//! What a build measured: the time each stage took, the sandbox it ran
//! in, and the plugin's startup profile. A worker reports it and the
//! customer sees it, so a report is taken only in this shape and within
//! these bounds.

use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most stages a profile may name.
pub const MAX_PROFILE_STAGES: usize = 32;
/// Longest name of a stage or of the sandbox, in bytes.
pub const MAX_PROFILE_NAME_BYTES: usize = 64;

/// The timings of one build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildProfile {
    /// Milliseconds each stage took, by stage (`fetch`, `compile`, …).
    #[serde(default)]
    pub stages_ms: BTreeMap<String, u64>,
    /// The sandbox the build ran in (`bubblewrap`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// What an edge server pays at a cold start of the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<StartupProfile>,
}

/// A module's cold start, medians in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartupProfile {
    /// `Module::new` from the `.wasm` (just-in-time compilation).
    pub jit_compile_us: u64,
    /// Mapping the precompiled `.cwasm` from its file and linking it, as an
    /// edge server loads it.
    pub cwasm_load_us: u64,
    /// Instantiation with the pooling allocator and copy-on-write images.
    pub instantiate_us: u64,
    /// From instantiation to the end of a smoke request.
    pub first_response_us: u64,
    /// Cold starts measured.
    pub runs: u32,
}

/// The keys a reported profile may have.
const KEYS: [&str; 3] = ["stages_ms", "sandbox", "startup"];

impl BuildProfile {
    /// A profile as a worker reports it (JSON): only the known keys, at
    /// most [`MAX_PROFILE_STAGES`] stages, names of at most
    /// [`MAX_PROFILE_NAME_BYTES`] bytes.
    pub fn parse_reported(raw: &str) -> Result<Self, ValidationError> {
        let refused = |e: &dyn std::fmt::Display| {
            ValidationError::new(format!(
                "profile must be {{stages_ms, sandbox, startup}} as workers report it: {e}"
            ))
        };
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| refused(&e))?;
        let Some(fields) = value.as_object() else {
            return Err(refused(&"it is not an object"));
        };
        if let Some(unknown) = fields.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(refused(&format!("unknown field `{unknown}`")));
        }
        let profile: Self = serde_json::from_value(value).map_err(|e| refused(&e))?;
        let long = |name: &str| name.len() > MAX_PROFILE_NAME_BYTES;
        if profile.stages_ms.len() > MAX_PROFILE_STAGES
            || profile.stages_ms.keys().any(|k| long(k))
            || profile.sandbox.as_deref().is_some_and(long)
        {
            return Err(ValidationError::new(format!(
                "profile may name at most {MAX_PROFILE_STAGES} stages, each name at most {MAX_PROFILE_NAME_BYTES} bytes"
            )));
        }
        Ok(profile)
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a profile serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_taken_in_its_shape_and_bounds_only() {
        let profile =
            BuildProfile::parse_reported(r#"{"stages_ms": {"compile": 5}, "sandbox": "none"}"#)
                .unwrap();
        assert_eq!(profile.stages_ms["compile"], 5);
        assert_eq!(
            BuildProfile::parse_reported(&profile.to_json()).unwrap(),
            profile
        );
        let many: BTreeMap<String, u64> = (0..=MAX_PROFILE_STAGES)
            .map(|i| (format!("s{i}"), 1))
            .collect();
        let long = "x".repeat(MAX_PROFILE_NAME_BYTES + 1);
        for refused in [
            "[]".to_owned(),
            r#"{"stages_ms": {"compile": -1}}"#.to_owned(),
            r#"{"other": 1}"#.to_owned(),
            serde_json::json!({ "stages_ms": many }).to_string(),
            serde_json::json!({ "sandbox": long }).to_string(),
        ] {
            assert!(BuildProfile::parse_reported(&refused).is_err(), "{refused}");
        }
    }
}
