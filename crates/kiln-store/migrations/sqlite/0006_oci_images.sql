-- The OCI registry (/v2/) serves each module as a single-layer image that
-- kiln derives from the module alone, byte for byte the same on every
-- server. This table remembers the digests of each module's image, so a
-- manifest or blob asked for by digest finds its module on any server: a
-- cache of a function of the module, written whenever a manifest is served.
CREATE TABLE oci_images (
    -- The module's (the .wasm's) hex sha256, as in versions.binary_sha256.
    binary_sha256    TEXT PRIMARY KEY,
    -- "sha256:<hex>" digests of the image's manifest, config and layer.
    manifest_digest  TEXT NOT NULL,
    config_digest    TEXT NOT NULL,
    layer_digest     TEXT NOT NULL
);
CREATE INDEX oci_images_manifest ON oci_images(manifest_digest);
CREATE INDEX oci_images_config ON oci_images(config_digest);
CREATE INDEX oci_images_layer ON oci_images(layer_digest);
