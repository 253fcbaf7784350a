//! What the OCI registry (`/v2/`) needs of the store: the digests of the
//! image each module is served as, and a module's version within one
//! application. The images themselves are derived from the module on
//! demand, never stored.

use super::rows::VersionRow;
use super::{MetaStore, VERSION_COLS};
use crate::Result;
use kiln_domain::{AppId, OwnerId, Version};

/// The `sha256:<hex>` digests of the image a module is served as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDigests {
    /// Digest of the image manifest.
    pub manifest: String,
    /// Digest of the image config.
    pub config: String,
    /// Digest of the image's one layer, a gzipped tar holding the module.
    pub layer: String,
}

impl MetaStore {
    /// Remembers the digests of the image of the module `binary_sha256`,
    /// replacing what was remembered (the image is a function of the module,
    /// so only a change of that function, in a newer kiln, changes them).
    pub async fn record_image(&self, binary_sha256: &str, digests: &ImageDigests) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO oci_images (binary_sha256, manifest_digest, config_digest, layer_digest) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (binary_sha256) DO UPDATE SET \
                         manifest_digest = excluded.manifest_digest, config_digest = excluded.config_digest, \
                         layer_digest = excluded.layer_digest")
                .bind(binary_sha256).bind(&digests.manifest).bind(&digests.config).bind(&digests.layer)
                .execute(pool).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The module (its hex sha256) whose image has a manifest, config or
    /// layer with this digest, if one was served.
    pub async fn module_by_image_digest(&self, digest: &str) -> Result<Option<String>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT binary_sha256 FROM oci_images WHERE manifest_digest = $1 \
                                OR config_digest = $1 OR layer_digest = $1 LIMIT 1")
                .bind(digest).fetch_optional(pool).await
        })?)
    }

    /// The oldest version of the owner's application whose `.wasm` has
    /// this sha256.
    pub async fn app_version_by_sha256(
        &self,
        owner: OwnerId,
        app: AppId,
        sha256: &str,
    ) -> Result<Option<Version>> {
        let sql = format!(
            "SELECT {VERSION_COLS} FROM versions WHERE binary_sha256 = $1 AND application_id = $2 \
             AND owner_id = $3 ORDER BY created_us, id LIMIT 1"
        );
        let row: Option<VersionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(sha256).bind(app.0).bind(owner.0).fetch_optional(pool).await
        })?;
        row.map(TryInto::try_into).transpose()
    }
}
