//! `kiln fsck`: the metadata and blob stores checked against each other,
//! read-only unless `--repair` (which removes only blobs no row owns).

use crate::cli::FsckArgs;
use crate::serve::{open_blobs, open_meta};
use std::time::Duration;

pub async fn run(args: FsckArgs) -> anyhow::Result<()> {
    let meta = open_meta(&args.store).await?;
    let blobs = open_blobs(&args.store, &args.blobs)?;
    let findings = kiln_store::fsck::check(&meta, &blobs).await?;
    let removed = if args.repair {
        let grace = Duration::from_secs(args.grace_minutes * 60);
        kiln_store::fsck::remove_orphans(&blobs, &findings, grace).await?
    } else {
        0
    };
    if args.json {
        let orphans: Vec<_> = findings
            .orphans
            .iter()
            .map(|(key, written)| serde_json::json!({"key": key, "written": written}))
            .collect();
        let report = serde_json::json!({
            "missing": findings.missing, "orphans": orphans, "removed": removed,
        });
        println!("{report}");
    } else {
        for key in &findings.missing {
            println!("missing  {key}  (a row names it; the blob store does not have it)");
        }
        for (key, written) in &findings.orphans {
            println!("orphan   {key}  (written {written}; no row owns it)");
        }
        println!(
            "{} missing, {} orphaned{}",
            findings.missing.len(),
            findings.orphans.len(),
            if args.repair {
                format!(", {removed} removed")
            } else {
                String::new()
            }
        );
    }
    meta.close().await;
    anyhow::ensure!(
        findings.missing.is_empty(),
        "rows name blobs that are missing"
    );
    Ok(())
}
