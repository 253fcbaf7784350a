//! Blob keys. Everything of an application sits under one prefix, so
//! deleting an application deletes its blobs with one listing.

use kiln_domain::{AppId, BuildId};

/// The prefix under which every blob of an application sits.
pub fn app_prefix(app: AppId) -> String {
    format!("apps/{app}/")
}

/// The prefix under which every blob of one build sits.
pub fn build_prefix(app: AppId, build: BuildId) -> String {
    format!("apps/{app}/builds/{build}/")
}

/// The uploaded archive; `extension` is `tar.gz` or `zip`.
pub fn source(app: AppId, build: BuildId, extension: &str) -> String {
    format!("{}source.{extension}", build_prefix(app, build))
}

/// Where a build's `.wasm` was stored before each report had a directory
/// of its own ([`report_binary`]); versions stored then still name it.
pub fn binary(app: AppId, build: BuildId) -> String {
    format!("{}plugin.wasm", build_prefix(app, build))
}

/// Where a build's log was stored before each report had a directory of
/// its own ([`report_logs`]); builds stored then still name it.
pub fn logs(app: AppId, build: BuildId) -> String {
    format!("{}build.log", build_prefix(app, build))
}

/// A directory of one report's own: two reports of a build (a retry sent
/// to another server, say) never write, or undo, each other's blobs.
pub fn report_prefix(app: AppId, build: BuildId) -> String {
    format!(
        "{}reports/{}/",
        build_prefix(app, build),
        uuid::Uuid::new_v4().simple()
    )
}

/// The `.wasm` a report stored under `report` (a [`report_prefix`]).
pub fn report_binary(report: &str) -> String {
    format!("{report}plugin.wasm")
}

/// The build log a report stored under `report` (a [`report_prefix`]).
pub fn report_logs(report: &str) -> String {
    format!("{report}build.log")
}

/// A further artifact of a version, such as a precompiled module: beside
/// its binary, whose key the version row holds.
pub fn artifact(binary_location: &str, name: &str) -> String {
    let dir = binary_location.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{dir}/artifacts/{name}")
}

/// The directory of the artifacts beside `binary_location`.
pub fn artifacts_prefix(binary_location: &str) -> String {
    artifact(binary_location, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_do_not_share_keys_and_artifacts_sit_beside_their_binary() {
        let (app, build) = (AppId(uuid::Uuid::nil()), BuildId(uuid::Uuid::nil()));
        let (a, b) = (report_prefix(app, build), report_prefix(app, build));
        assert_ne!(a, b);
        assert!(a.starts_with(&build_prefix(app, build)));
        let reported = report_binary(&a);
        assert_eq!(
            artifact(&reported, "x.cwasm"),
            format!("{a}artifacts/x.cwasm")
        );
        // Versions stored before reports had directories of their own.
        assert_eq!(
            artifact(&binary(app, build), "x.cwasm"),
            format!("{}artifacts/x.cwasm", build_prefix(app, build))
        );
    }
}
