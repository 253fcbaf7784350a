//! The native code kiln serves. A `.cwasm` is machine code an edge server
//! jumps into, so it is made here, on the server, from a `.wasm` the server
//! has validated itself: Cranelift compiles it and nothing of it runs.
//! Workers run customer code and may hand over only the `.wasm`. Each
//! artifact is signed with the server's Ed25519 key (see
//! [`kiln_wasm::signing`]), so an edge server can refuse anything else.

use ed25519_dalek::SigningKey;
use kiln_domain::BuildId;
use kiln_wasm::signing::{self, PublicKey};
use kiln_wasm::{EngineSettings, HostEngine, HostError};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Modules compiled at once: Cranelift already uses every core for one.
const CONCURRENT_COMPILES: usize = 1;

/// Precompiles and signs the artifacts of succeeded builds.
pub struct Precompiler {
    /// This host's edge engine first, then one per extra target triple.
    engines: Vec<HostEngine>,
    key: SigningKey,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Precompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precompiler")
            .field("targets", &self.targets())
            .finish_non_exhaustive()
    }
}

impl Precompiler {
    /// Artifacts for this host and each of `extra_targets`, with the
    /// engine settings edge servers load them with, signed with `key`.
    pub fn new(extra_targets: &[String], key: SigningKey) -> Result<Self, HostError> {
        let mut engines = vec![HostEngine::edge()?];
        for target in extra_targets {
            let settings = EngineSettings::edge(Some(target.clone()));
            engines.push(HostEngine::with_settings(&settings, false)?);
        }
        Ok(Self {
            engines,
            key,
            permits: Arc::new(Semaphore::new(CONCURRENT_COMPILES)),
        })
    }

    /// The key `GET /signing-key` serves.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::of(&self.key)
    }

    /// The target triples artifacts are made for, this host's first.
    pub fn targets(&self) -> Vec<&str> {
        self.engines.iter().map(HostEngine::target).collect()
    }

    /// The signed `.cwasm` of `wasm` (the version `version`) for each
    /// target, compiled off the async threads, one module at a time.
    pub async fn precompile(
        &self,
        version: BuildId,
        wasm: bytes::Bytes,
    ) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        // The semaphore is never closed, so acquiring cannot fail. The
        // permit goes with the compile: a request that gives up does not
        // free it while Cranelift still runs.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (engines, key) = (self.engines.clone(), self.key.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engines
                .iter()
                .map(|engine| {
                    let cwasm = engine.precompile(&wasm)?;
                    let target = engine.target().to_owned();
                    let signed = signing::sign(&key, &version.to_string(), &target, &cwasm);
                    Ok((target, signed))
                })
                .collect()
        })
        .await
        .map_err(|e| HostError::Setup(format!("precompiling: {e}")))?
    }
}

/// The blob name of a precompiled artifact, `<target>.cwasm`. Target
/// triples are plain identifiers; anything else is refused (`None`)
/// before it reaches a key.
pub fn cwasm_name(target: &str) -> Option<String> {
    let valid = !target.is_empty()
        && target.len() <= 100
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    valid.then(|| format!("{target}.cwasm"))
}

/// The server's signing key from `path`, created there (mode 0600) on the
/// first start when `create` is set.
pub fn signing_key(path: &Path, create: bool) -> anyhow::Result<SigningKey> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            refuse_shared(path)?;
            signing::signing_key_from_hex(&text)
                .with_context(|| format!("reading the signing key {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = signing::new_signing_key().context("making a signing key")?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating the signing key {}", path.display()))?;
            writeln!(file, "{}", hex::encode(key.to_bytes()))
                .with_context(|| format!("writing the signing key {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the signing key {}", path.display())),
    }
}

/// Refuses a key file that users other than its owner can read: whoever
/// reads it can sign native code for every edge server.
fn refuse_shared(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "the signing key {} can be read by other users (mode {:o}); make it readable by its owner only (chmod 600)",
        path.display(),
        mode & 0o777
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        assert!(
            signing_key(&path, false).is_err(),
            "not created unless asked"
        );
        let created = signing_key(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(signing_key(&path, true).unwrap(), created);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let shared = signing_key(&path, true).unwrap_err();
        assert!(format!("{shared:#}").contains("chmod 600"), "{shared:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex").unwrap();
        assert!(signing_key(&path, true).is_err());
    }
}
