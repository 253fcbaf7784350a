//! Fetching dependencies: a registry that cannot be reached is kiln's
//! failure (the build is retried), a crate that does not exist is the
//! customer's (the build fails).

use kiln_build::{RustConfig, RustToolchain, Toolchain, ToolchainError};
use std::path::Path;

/// The toolchain scripts/install-prereqs installs; without it the test
/// is skipped, unless the test command requires everything.
fn toolchain(cache: &Path, registry_proxy: Option<String>) -> Option<RustToolchain> {
    let config = RustConfig {
        cache_dir: cache.to_path_buf(),
        registry_proxy,
        ..RustConfig::default()
    };
    match RustToolchain::new(config) {
        Ok(toolchain) => Some(toolchain),
        Err(e) if std::env::var_os("KILN_TEST_REQUIRE_SERVICES").is_none() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A project without a lock file, so resolving needs the registry.
fn project(dir: &Path, dependency: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"f\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n{dependency}\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
}

#[tokio::test]
async fn an_unreachable_registry_is_not_the_customers_fault() {
    let (cache, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A proxy nobody listens on: every download fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let Some(toolchain) = toolchain(cache.path(), Some(format!("http://{closed}"))) else {
        return;
    };
    let src = scratch.path().join("src");
    project(&src, "itoa = \"1\"");
    let err = toolchain.prepare(scratch.path(), &src).await.unwrap_err();
    assert!(
        matches!(err, ToolchainError::RegistryUnavailable(_)),
        "{err:?}"
    );
    assert!(!err.is_customer_error());
    assert!(err.to_string().contains("could not be reached"), "{err}");
}

#[tokio::test]
async fn a_crate_that_does_not_exist_is() {
    let (cache, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some(toolchain) = toolchain(cache.path(), None) else {
        return;
    };
    let src = scratch.path().join("src");
    project(&src, "kiln-no-such-crate-4b1d = \"1\"");
    let err = toolchain.prepare(scratch.path(), &src).await.unwrap_err();
    assert!(matches!(err, ToolchainError::Fetch(_)), "{err:?}");
    assert!(err.is_customer_error());
    assert!(err.to_string().contains("kiln-no-such-crate-4b1d"), "{err}");
}
