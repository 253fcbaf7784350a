//! The formats of an uploaded source archive.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The format of a source archive, as the upload's contents showed it.
/// The blob key of the stored source ends with it (`source.tar.gz`,
/// `source.zip`), and a worker's claim names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SourceKind {
    /// A gzip-compressed tar archive (`tar.gz`).
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A zip archive (`zip`).
    #[serde(rename = "zip")]
    Zip,
}

impl SourceKind {
    /// Its name on the wire, which is also the extension of its blob key.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::TarGz => "tar.gz",
            SourceKind::Zip => "zip",
        }
    }

    /// The `Content-Type` of a download of the archive.
    pub fn content_type(self) -> &'static str {
        match self {
            SourceKind::TarGz => "application/gzip",
            SourceKind::Zip => "application/zip",
        }
    }

    /// The kind of the source stored under `location`, a key that ends
    /// with the extension [`SourceKind::as_str`] gave it at upload.
    pub fn of_location(location: &str) -> Self {
        if location.ends_with(".zip") {
            SourceKind::Zip
        } else {
            SourceKind::TarGz
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::SourceKind;

    #[test]
    fn each_kind_is_named_on_the_wire_as_its_extension() {
        for kind in [SourceKind::TarGz, SourceKind::Zip] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<SourceKind>(&json).unwrap(), kind);
            let key = format!("apps/a/builds/b/source.{kind}");
            assert_eq!(SourceKind::of_location(&key), kind);
        }
        assert_eq!(SourceKind::TarGz.as_str(), "tar.gz");
        assert_eq!(SourceKind::Zip.as_str(), "zip");
    }
}
