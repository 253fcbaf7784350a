//! The stores against each other. A blob is written before the row that
//! names it (an upload's source, a report's binary and logs), so a crash
//! between the two leaves a blob no row owns; and a blob store that lost
//! an object leaves a row naming what is not there. [`check`] finds both;
//! [`remove_orphans`] removes orphans older than a grace period, which is
//! longer than any upload or report takes, so a write in flight is never
//! taken for one.

use crate::{BlobStore, MetaStore, Result};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;

/// What [`check`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Blobs no row owns, with when they were written.
    pub orphans: Vec<(String, DateTime<Utc>)>,
    /// Blobs a row names that the blob store does not have.
    pub missing: Vec<String>,
}

impl Findings {
    /// Whether the stores agree: no orphans and nothing missing.
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty() && self.missing.is_empty()
    }
}

/// Lists every blob and every row's blobs, and compares them. Read-only.
pub async fn check(meta: &MetaStore, blobs: &BlobStore) -> Result<Findings> {
    let owned = meta.blob_references().await?;
    let stored = blobs.list_dated("apps/").await?;
    let stored_keys: HashSet<&str> = stored.iter().map(|(key, _)| key.as_str()).collect();
    let mut findings = Findings {
        missing: owned
            .keys
            .iter()
            .filter(|key| !stored_keys.contains(key.as_str()))
            .cloned()
            .collect(),
        ..Findings::default()
    };
    findings.missing.sort();
    for (key, written) in stored {
        let directory = key.rsplit_once('/').map_or("", |(dir, _)| dir);
        let artifact_of_a_version = owned.version_prefixes.contains(&format!("{directory}/"));
        if !owned.keys.contains(&key) && !artifact_of_a_version {
            findings.orphans.push((key, written));
        }
    }
    findings.orphans.sort();
    Ok(findings)
}

/// Removes the orphans that are older than `grace`: how many.
pub async fn remove_orphans(
    blobs: &BlobStore,
    findings: &Findings,
    grace: Duration,
) -> Result<usize> {
    let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut removed = 0;
    for (key, written) in &findings.orphans {
        if *written < cutoff {
            blobs.delete(key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The blobs the rows name.
#[derive(Debug, Default)]
pub struct References {
    /// Every key a build or version row names.
    pub keys: HashSet<String>,
    /// The artifacts directory of every version (beside its binary): its
    /// precompiled modules live there, named by target.
    pub version_prefixes: HashSet<String>,
}
