//! Blob keys. Everything of an application sits under one prefix, so
//! deleting an application deletes its blobs with one listing.

use kiln_domain::{AppId, BuildId};

pub fn app_prefix(app: AppId) -> String {
    format!("apps/{app}/")
}

pub fn build_prefix(app: AppId, build: BuildId) -> String {
    format!("apps/{app}/builds/{build}/")
}

/// The uploaded archive; `extension` is `tar.gz` or `zip`.
pub fn source(app: AppId, build: BuildId, extension: &str) -> String {
    format!("{}source.{extension}", build_prefix(app, build))
}

pub fn binary(app: AppId, build: BuildId) -> String {
    format!("{}plugin.wasm", build_prefix(app, build))
}

pub fn logs(app: AppId, build: BuildId) -> String {
    format!("{}build.log", build_prefix(app, build))
}

/// Any further artifact of a build, such as a precompiled module.
pub fn artifact(app: AppId, build: BuildId, name: &str) -> String {
    format!("{}artifacts/{name}", build_prefix(app, build))
}
