//! The blob store against a local directory, memory, and a real
//! S3-compatible server (`KILN_TEST_S3_ENDPOINT`, started by `scripts/test`).

use bytes::Bytes;
use kiln_store::{BlobStore, S3Config, StoreError};

fn s3_store() -> Option<BlobStore> {
    let Ok(endpoint) = std::env::var("KILN_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("KILN_TEST_REQUIRE_SERVICES").is_err(),
            "KILN_TEST_S3_ENDPOINT is not set but KILN_TEST_REQUIRE_SERVICES is"
        );
        eprintln!("skipped: KILN_TEST_S3_ENDPOINT is not set (scripts/test sets it)");
        return None;
    };
    let config = S3Config {
        bucket: std::env::var("KILN_TEST_S3_BUCKET").expect("KILN_TEST_S3_BUCKET"),
        endpoint: Some(endpoint),
        region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
    };
    Some(BlobStore::s3(&config).unwrap())
}

async fn round_trip_and_prefix_delete(store: BlobStore) {
    // A unique prefix per run, so runs against one bucket never collide.
    let root = format!("apps/{}/", uuid::Uuid::new_v4());
    let a = format!("{root}builds/1/source.tar.gz");
    let b = format!("{root}builds/2/plugin.wasm");
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    store.put(&a, Bytes::from_static(b"source")).await.unwrap();
    store.put(&b, big.clone()).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap(), Bytes::from_static(b"source"));
    assert_eq!(store.get(&b).await.unwrap(), big);
    assert!(store.exists(&a).await.unwrap());

    // Overwrite replaces the whole object.
    store.put(&a, Bytes::from_static(b"v2")).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap(), Bytes::from_static(b"v2"));

    let mut listed = store.list(&root).await.unwrap();
    listed.sort();
    assert_eq!(listed, vec![a.clone(), b.clone()]);

    store.delete_prefix(&root).await.unwrap();
    assert!(store.list(&root).await.unwrap().is_empty());
    assert!(matches!(store.get(&a).await, Err(StoreError::NotFound)));
    assert!(!store.exists(&b).await.unwrap());
    // Deleting what is gone is not an error.
    store.delete(&a).await.unwrap();
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    round_trip_and_prefix_delete(BlobStore::local(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn local_directory_leaves_no_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path()).unwrap();
    store
        .put("apps/x/builds/y/plugin.wasm", Bytes::from_static(b"wasm"))
        .await
        .unwrap();
    let files: Vec<_> = walk(dir.path());
    assert_eq!(files, vec![dir.path().join("apps/x/builds/y/plugin.wasm")]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

#[tokio::test]
async fn memory() {
    round_trip_and_prefix_delete(BlobStore::memory()).await;
}

#[tokio::test]
async fn s3_compatible_server() {
    if let Some(store) = s3_store() {
        round_trip_and_prefix_delete(store).await;
    }
}

#[test]
fn s3_secrets_are_redacted_in_debug() {
    let config = S3Config {
        bucket: "b".into(),
        endpoint: None,
        region: "r".into(),
        access_key_id: Some("AKIA".into()),
        secret_access_key: Some("very-secret".into()),
    };
    assert!(!format!("{config:?}").contains("very-secret"));
}
