//! Blobs over `object_store`. A put is a single atomic write in every
//! backend (the local one stages to a temporary file and renames; S3 makes an
//! object visible only when its upload completes), so a half-written blob is
//! never visible under its key.

use crate::{Result, StoreError};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::fmt;
use std::sync::Arc;

/// Connection settings of an S3-compatible store.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket that holds every blob.
    pub bucket: String,
    /// e.g. `http://127.0.0.1:8333`; `None` means AWS itself.
    pub endpoint: Option<String>,
    /// The bucket's region; requests are signed for it.
    pub region: String,
    /// The access key id, set together with `secret_access_key`; with
    /// neither, credentials come from the instance metadata service (an
    /// EC2 instance role).
    pub access_key_id: Option<String>,
    /// The access key's secret. `Debug` redacts it, so it is never logged.
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where kiln keeps sources, binaries and logs, by key: a local
/// directory, an S3-compatible bucket, or memory. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl BlobStore {
    /// A store in a local directory, created if missing.
    pub fn local(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Config(format!(
                "cannot create blob directory {}: {e}",
                dir.display()
            ))
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            inner: Arc::new(fs),
            description: format!("file://{}", dir.display()),
        })
    }

    /// A store in an S3-compatible bucket, addressed path-style; plain HTTP
    /// only when the endpoint is an `http://` URL.
    pub fn s3(config: &S3Config) -> Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(false);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        Ok(Self {
            inner: Arc::new(builder.build()?),
            description: format!("s3://{}", config.bucket),
        })
    }

    /// An in-memory store for unit tests.
    pub fn memory() -> Self {
        Self {
            inner: Arc::new(InMemory::new()),
            description: "memory://".into(),
        }
    }

    /// Where the blobs live, without credentials (`file://DIR`,
    /// `s3://BUCKET`, `memory://`), for logs and health checks.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Writes `bytes` under `key` in one atomic write, replacing any blob
    /// there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.inner
            .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// Reads the whole blob under `key`; `NotFound` when there is none.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        match self.inner.get(&ObjectPath::from(key)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a blob is stored under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a blob; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every blob under `prefix` (which ends with `/`).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let prefix = ObjectPath::from(prefix.trim_end_matches('/'));
        let keys: Vec<_> = self
            .inner
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        for key in keys {
            self.delete(key.as_ref()).await?;
        }
        Ok(())
    }

    /// Lists keys under a prefix with when each was written.
    pub async fn list_dated(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        let prefix = ObjectPath::from(prefix.trim_end_matches('/'));
        Ok(self
            .inner
            .list(Some(&prefix))
            .map_ok(|meta| (meta.location.to_string(), meta.last_modified))
            .try_collect()
            .await?)
    }

    /// Lists keys under a prefix, for tests and maintenance.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = ObjectPath::from(prefix.trim_end_matches('/'));
        Ok(self
            .inner
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?)
    }
}
