//! Modules as OCI images, in the layout Istio's `WasmPlugin` pulls: the
//! "compat" variant of the Wasm image specification, an OCI image manifest
//! with one `application/vnd.oci.image.layer.v1.tar+gzip` layer whose tar
//! holds the module as `plugin.wasm`, and an image config.
//!
//! An image is a function of the module alone: the tar header is fixed
//! (mode 0644, uid and gid 0, mtime 0, no user names), the gzip header
//! carries no time, name or OS, the JSON has a fixed field order, and the
//! compressor is the one `Cargo.lock` pins. So every server, at every
//! request, serves the same bytes under the same digests, and a digest a
//! client pinned (`oci://…@sha256:…`) stays valid. What is not done here:
//! serving (see `routes::registry`) and storing images (they are rebuilt on
//! demand; [`ImageCache`] keeps the last few).

use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use kiln_store::ImageDigests;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The media type of the manifest kiln serves.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of the image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of the one layer, as Istio's compat variant expects it.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The name of the module inside the layer, as the compat variant fixes it.
pub const MODULE_FILE: &str = "plugin.wasm";

/// How many built images [`ImageCache`] keeps.
pub const IMAGE_CACHE_ENTRIES: usize = 16;

/// `sha256:<hex>` of `bytes`, as OCI writes digests.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `raw` is a digest as kiln serves them (`sha256:` and 64
/// lowercase hex digits). Other algorithms are never served.
pub fn is_digest(raw: &str) -> bool {
    raw.strip_prefix("sha256:")
        .is_some_and(kiln_domain::channel::is_sha256_hex)
}

/// One module's image: its three blobs and their digests.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest, as served (its digest is the image's).
    pub manifest: Bytes,
    /// The image config.
    pub config: Bytes,
    /// The gzipped tar holding [`MODULE_FILE`].
    pub layer: Bytes,
    /// The `sha256:` digests of the manifest, the config and the layer.
    pub digests: ImageDigests,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: [Descriptor<'a>; 1],
}

#[derive(Serialize)]
struct Config<'a> {
    /// Go's names for WebAssembly, as the image spec asks
    /// (`GOARCH=wasm GOOS=wasip1`).
    architecture: &'a str,
    os: &'a str,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    /// The digests of the uncompressed layers.
    diff_ids: [&'a str; 1],
}

impl Image {
    /// The image of `wasm`. Pure and deterministic: equal modules give
    /// equal images, byte for byte.
    pub fn build(wasm: &[u8]) -> Image {
        let tar = module_tar(wasm);
        let layer = gzip(&tar);
        let layer_digest = digest(&layer);
        let diff_id = digest(&tar);
        let config = Config {
            architecture: "wasm",
            os: "wasip1",
            rootfs: RootFs {
                kind: "layers",
                diff_ids: [&diff_id],
            },
        };
        // Serializing these structs cannot fail: no maps, no non-string keys.
        let config = serde_json::to_vec(&config).expect("the config serializes");
        let config_digest = digest(&config);
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE,
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE,
                digest: &config_digest,
                size: config.len(),
            },
            layers: [Descriptor {
                media_type: LAYER_MEDIA_TYPE,
                digest: &layer_digest,
                size: layer.len(),
            }],
        };
        let manifest = serde_json::to_vec(&manifest).expect("the manifest serializes");
        let digests = ImageDigests {
            manifest: digest(&manifest),
            config: config_digest,
            layer: layer_digest,
        };
        Image {
            manifest: manifest.into(),
            config: config.into(),
            layer: layer.into(),
            digests,
        }
    }

    /// The config or the layer, by digest, with its media type.
    pub fn blob(&self, digest: &str) -> Option<(Bytes, &'static str)> {
        if digest == self.digests.config {
            Some((self.config.clone(), CONFIG_MEDIA_TYPE))
        } else if digest == self.digests.layer {
            Some((self.layer.clone(), LAYER_MEDIA_TYPE))
        } else {
            None
        }
    }
}

/// A tar of one entry, [`MODULE_FILE`], with a header that says nothing
/// about where or when it was made.
fn module_tar(wasm: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    // A fixed, short, relative name: setting it cannot fail.
    header.set_path(MODULE_FILE).expect("a valid tar path");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::with_capacity(wasm.len() + 2048));
    // Writing into a Vec cannot fail.
    tar.append(&header, wasm).expect("tar into memory");
    tar.into_inner().expect("tar into memory")
}

/// gzip with a header of no time, no name and an unknown OS.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(bytes.len() / 2), Compression::best());
    // Writing into a Vec cannot fail.
    gz.write_all(bytes).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// The images of the last [`IMAGE_CACHE_ENTRIES`] modules served, by the
/// module's sha256, so a pull (a manifest, then its blobs) reads and
/// compresses the module once.
#[derive(Debug, Default)]
pub struct ImageCache {
    /// Most recently used last.
    entries: Mutex<VecDeque<(String, Arc<Image>)>>,
}

impl ImageCache {
    /// The image of the module `binary_sha256`, which becomes the most
    /// recently used.
    pub fn get(&self, binary_sha256: &str) -> Option<Arc<Image>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let at = entries.iter().position(|(sha, _)| sha == binary_sha256)?;
        let entry = entries.remove(at)?;
        let image = entry.1.clone();
        entries.push_back(entry);
        Some(image)
    }

    /// Keeps `image` as the module `binary_sha256`'s, dropping the least
    /// recently used beyond [`IMAGE_CACHE_ENTRIES`].
    pub fn insert(&self, binary_sha256: &str, image: Arc<Image>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(sha, _)| sha != binary_sha256);
        if entries.len() >= IMAGE_CACHE_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((binary_sha256.to_owned(), image));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn the_layer_holds_the_module_as_plugin_wasm() {
        let image = Image::build(MODULE);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&image.layer[..]));
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            entries.push((entry.path().unwrap().display().to_string(), bytes));
        }
        assert_eq!(entries, [(MODULE_FILE.to_owned(), MODULE.to_vec())]);
    }

    #[test]
    fn the_manifest_names_the_config_and_the_layer() {
        let image = Image::build(MODULE);
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(manifest["config"]["digest"], image.digests.config);
        assert_eq!(manifest["config"]["size"], image.config.len());
        assert_eq!(manifest["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(manifest["layers"][0]["digest"], image.digests.layer);
        assert_eq!(manifest["layers"][0]["size"], image.layer.len());
        assert_eq!(image.digests.manifest, digest(&image.manifest));
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&image.layer[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(&tar));
        assert_eq!(
            image.blob(&image.digests.layer).unwrap().1,
            LAYER_MEDIA_TYPE
        );
        assert!(image.blob(&image.digests.manifest).is_none());
    }

    /// A tripwire: changing any byte of the layout changes every digest
    /// kiln serves, and breaks every pull pinned by digest. Change this
    /// value only on purpose.
    #[test]
    fn images_are_the_same_everywhere() {
        let image = Image::build(MODULE);
        assert_eq!(Image::build(MODULE).manifest, image.manifest);
        assert_eq!(
            image.digests.manifest,
            "sha256:d3c749c2515521a579d07c6fd1279c8f77069a453c1a14903b7a63dc40c79d2d"
        );
    }

    #[test]
    fn digests_are_strict() {
        assert!(is_digest(&digest(b"x")));
        assert!(!is_digest(&format!("sha512:{}", "a".repeat(64))));
        assert!(!is_digest("sha256:../x"));
    }

    #[test]
    fn the_cache_keeps_the_latest() {
        let cache = ImageCache::default();
        let image = Arc::new(Image::build(MODULE));
        for i in 0..=IMAGE_CACHE_ENTRIES {
            cache.insert(&i.to_string(), image.clone());
        }
        assert!(cache.get("0").is_none(), "the oldest went");
        assert!(cache.get("1").is_some());
        cache.insert("new", image);
        assert!(cache.get("1").is_some(), "a read keeps it");
        assert!(cache.get("2").is_none());
    }
}
