//! Signed `.cwasm` artifacts. A `.cwasm` is machine code an edge server maps
//! and jumps into, so it must come from kiln's trusted precompilation step
//! and nowhere else (never from a worker, which runs customer code). That
//! step signs each artifact with the server's Ed25519 key; the signature
//! covers the artifact's sha256, the version id and the target triple, and
//! travels in the same file:
//!
//! ```text
//! "KILNSIG1"  u32 little-endian header length  header (JSON)  .cwasm bytes
//! ```
//!
//! The header is [`ArtifactHeader`]. [`verify`] checks all of it before a
//! byte of the `.cwasm` is handed to wasmtime.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of a signed artifact.
pub const MAGIC: &[u8; 8] = b"KILNSIG1";
/// A header is a few hundred bytes; anything larger is not kiln's.
const MAX_HEADER_BYTES: usize = 4096;
/// The only algorithm kiln signs with.
pub const ALGORITHM: &str = "ed25519";
/// What is signed starts with this, so a signature over an artifact can
/// never be taken for a signature over anything else.
const CONTEXT: &str = "kiln cwasm signature v1";

/// What a signed artifact says of itself, all of it signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactHeader {
    /// Always [`ALGORITHM`]; any other is refused.
    pub algorithm: String,
    /// The version the artifact was compiled from.
    pub version_id: String,
    /// The target triple it was compiled for.
    pub target: String,
    /// sha256 of the `.cwasm` bytes, in hex.
    pub sha256: String,
    /// The Ed25519 signature, in hex.
    pub signature: String,
}

/// Why an artifact or a key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The bytes do not start with [`MAGIC`].
    #[error(
        "the file is not a signed kiln artifact (download it with ?format=cwasm from a kiln server)"
    )]
    Unsigned,
    /// The header is cut short, too long, not kiln's JSON, of another
    /// algorithm, or its signature is not 64 bytes of hex.
    #[error("the artifact's signature header is not valid: {0}")]
    Malformed(String),
    /// The `.cwasm` does not match the header's sha256.
    #[error("the artifact was altered: its .cwasm does not match the signed sha256")]
    Altered,
    /// The signature does not verify with the key: another key signed it,
    /// or the header was altered.
    #[error(
        "the artifact's signature does not verify with this key: another server signed it, or it was altered"
    )]
    Foreign,
    /// A key that is not 32 bytes of hex, or not a valid Ed25519 key.
    #[error("the key is not an Ed25519 public key: {0}")]
    BadKey(String),
}

/// A verified artifact: its header and its `.cwasm` bytes.
#[derive(Debug)]
pub struct Verified<'a> {
    /// The header, every field of it covered by the signature.
    pub header: ArtifactHeader,
    /// The `.cwasm` bytes, whose sha256 the signature covers.
    pub cwasm: &'a [u8],
}

/// Whether `bytes` start like a signed artifact.
pub fn is_signed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn message(sha256: &str, version_id: &str, target: &str) -> Vec<u8> {
    format!("{CONTEXT}\n{sha256}\n{version_id}\n{target}").into_bytes()
}

/// Wraps `cwasm` into a signed artifact of `version_id` for `target`.
pub fn sign(key: &SigningKey, version_id: &str, target: &str, cwasm: &[u8]) -> Vec<u8> {
    let sha256 = hex::encode(Sha256::digest(cwasm));
    let signature = key.sign(&message(&sha256, version_id, target));
    let header = ArtifactHeader {
        algorithm: ALGORITHM.into(),
        version_id: version_id.into(),
        target: target.into(),
        sha256,
        signature: hex::encode(signature.to_bytes()),
    };
    let header = serde_json::to_vec(&header).expect("a header of strings serializes");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + cwasm.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(cwasm);
    out
}

/// Checks a signed artifact against `key`: its form, the sha256 of its
/// `.cwasm` and the signature over sha256, version and target.
pub fn verify<'a>(bytes: &'a [u8], key: &VerifyingKey) -> Result<Verified<'a>, SignatureError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(SignatureError::Unsigned)?;
    let malformed = |what: &str| SignatureError::Malformed(what.to_owned());
    let (length, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed("it ends before its header"))?;
    let length = u32::from_le_bytes(*length) as usize;
    if length > MAX_HEADER_BYTES || length > rest.len() {
        return Err(malformed("its header length is out of bounds"));
    }
    let (header, cwasm) = rest.split_at(length);
    let header: ArtifactHeader = serde_json::from_slice(header)
        .map_err(|e| SignatureError::Malformed(format!("its header is not kiln's: {e}")))?;
    if header.algorithm != ALGORITHM {
        return Err(SignatureError::Malformed(format!(
            "unknown algorithm {:?}",
            header.algorithm
        )));
    }
    let signature: [u8; 64] = hex::decode(&header.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("its signature is not 64 bytes of hex"))?;
    if hex::encode(Sha256::digest(cwasm)) != header.sha256 {
        return Err(SignatureError::Altered);
    }
    key.verify_strict(
        &message(&header.sha256, &header.version_id, &header.target),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| SignatureError::Foreign)?;
    Ok(Verified { header, cwasm })
}

/// The public half of a signing key, as `GET /signing-key` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Always [`ALGORITHM`].
    pub algorithm: String,
    /// The 32-byte Ed25519 public key, in hex.
    pub public_key: String,
}

impl PublicKey {
    /// The public half of `key`.
    pub fn of(key: &SigningKey) -> Self {
        Self {
            algorithm: ALGORITHM.into(),
            public_key: hex::encode(key.verifying_key().to_bytes()),
        }
    }

    /// Reads what `GET /signing-key` answered, or the key's hex alone.
    pub fn parse(text: &str) -> Result<VerifyingKey, SignatureError> {
        let text = text.trim();
        let hex_key = match serde_json::from_str::<PublicKey>(text) {
            Ok(key) if key.algorithm == ALGORITHM => key.public_key,
            Ok(key) => {
                return Err(SignatureError::BadKey(format!(
                    "unknown algorithm {:?}",
                    key.algorithm
                )));
            }
            Err(_) => text.to_owned(),
        };
        let bytes: [u8; 32] = hex::decode(hex_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SignatureError::BadKey("expected 32 bytes in hex".into()))?;
        VerifyingKey::from_bytes(&bytes).map_err(|e| SignatureError::BadKey(e.to_string()))
    }
}

/// A signing key from its 32-byte seed in hex (the form kiln writes).
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, SignatureError> {
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SignatureError::BadKey("expected a 32-byte seed in hex".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new signing key from the operating system's random source.
pub fn new_signing_key() -> std::io::Result<SigningKey> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(std::io::Error::other)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_artifact_verifies_and_gives_back_its_cwasm() {
        let signed = sign(&key(1), "v1", "x86_64-unknown-linux-gnu", b"machine code");
        assert!(is_signed(&signed));
        let verified = verify(&signed, &key(1).verifying_key()).unwrap();
        assert_eq!(verified.cwasm, b"machine code");
        assert_eq!(verified.header.version_id, "v1");
        assert_eq!(verified.header.target, "x86_64-unknown-linux-gnu");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let signed = sign(&key(1), "v1", "t", b"machine code");
        let public = key(1).verifying_key();
        for at in 0..signed.len() {
            let mut altered = signed.clone();
            altered[at] ^= 0x01;
            assert!(verify(&altered, &public).is_err(), "byte {at} flipped");
        }
        let mut longer = signed.clone();
        longer.push(0);
        assert_eq!(
            verify(&longer, &public).unwrap_err(),
            SignatureError::Altered
        );
    }

    #[test]
    fn another_key_unsigned_and_truncated_artifacts_are_refused() {
        let signed = sign(&key(1), "v1", "t", b"machine code");
        assert_eq!(
            verify(&signed, &key(2).verifying_key()).unwrap_err(),
            SignatureError::Foreign
        );
        let public = key(1).verifying_key();
        assert_eq!(
            verify(b"\x7fELF...", &public).unwrap_err(),
            SignatureError::Unsigned
        );
        for cut in 0..signed.len() {
            assert!(verify(&signed[..cut], &public).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_header_naming_another_version_or_target_is_refused() {
        let signed = sign(&key(1), "v1", "t", b"code");
        let public = key(1).verifying_key();
        let text = String::from_utf8_lossy(&signed).replace("\"v1\"", "\"v2\"");
        assert_eq!(
            verify(text.as_bytes(), &public).unwrap_err(),
            SignatureError::Foreign
        );
    }

    #[test]
    fn public_keys_parse_from_the_servers_answer_or_hex() {
        let public = PublicKey::of(&key(3));
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(PublicKey::parse(&json).unwrap(), key(3).verifying_key());
        assert_eq!(
            PublicKey::parse(&format!("{}\n", public.public_key)).unwrap(),
            key(3).verifying_key()
        );
        assert!(PublicKey::parse("not a key").is_err());
        let seed = hex::encode([3u8; 32]);
        assert_eq!(
            signing_key_from_hex(&seed).unwrap().verifying_key(),
            key(3).verifying_key()
        );
    }
}
