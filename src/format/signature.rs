//! Signatures that tie a converted layer to the diff_id it claims.
//!
//! A lazily served layer is committed under the chain ID its image's config
//! claims, but what it serves is whatever its TOC says; nothing in the blob
//! proves the two are the same tar. Without a proof, an image that claims
//! the diff_id of a popular base layer would stand in for that layer in
//! every image pulled after it. The converter, which has read the whole
//! tar, signs (blob digest, TOC digest, diff_id) with a key; a node serves
//! lazily only layers signed by a key it trusts, and leaves the rest to
//! containerd's ordinary download, which checks the diff_id itself.
//!
//! Keys are Ed25519. Files hold one key as base64 text: the 32-byte seed
//! for a private key, the 32-byte point for a public one. A signature is
//! the annotation [`annotations::SIGNATURE`]:
//! `ed25519:<key id>:<base64 signature>`, the key id being the first 8
//! bytes of the public key's sha256, in hex.

use super::annotations;
use crate::digest::Digest;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use std::path::{Path, PathBuf};

/// Domain separation: a loci layer signature can never be mistaken for a
/// signature over anything else.
const CONTEXT: &[u8] = b"loci layer signature v1\0";
/// Longest signature annotation accepted (a real one is ~110 bytes).
const MAX_ANNOTATION: usize = 512;

/// What a signature vouches for: this blob, whose TOC is this one,
/// decompresses to the tar whose digest is this diff_id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerIdentity {
    /// The converted blob's digest.
    pub blob: Digest,
    /// The digest of its TOC frame.
    pub toc: Digest,
    /// The digest of its uncompressed tar.
    pub diff_id: Digest,
}

impl LayerIdentity {
    fn message(&self) -> Vec<u8> {
        let mut m = CONTEXT.to_vec();
        m.extend_from_slice(&self.blob.0);
        m.extend_from_slice(&self.toc.0);
        m.extend_from_slice(&self.diff_id.0);
        m
    }
}

/// Why a key could not be read or a signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A key file could not be read.
    #[error("reading key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold a key.
    #[error("key {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    /// The layer carries no signature.
    #[error("the layer is not signed")]
    Unsigned,
    /// The signature annotation does not parse.
    #[error("malformed signature annotation: {0}")]
    Malformed(String),
    /// Signed by a key this node does not trust.
    #[error("signed by key {0}, which this node does not trust")]
    UnknownKey(String),
    /// The signature does not verify for this layer.
    #[error("the signature of key {0} does not match this layer's blob, TOC and diff_id")]
    Invalid(String),
}

/// A private key that signs converted layers (`loci convert --sign-key`).
pub struct SigningKey(ed25519_dalek::SigningKey);

/// A public key a node trusts (`trusted_keys`).
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    id: String,
}

fn key_bytes(path: &Path) -> Result<[u8; 32], SignatureError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignatureError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| SignatureError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("{} bytes, a key is 32", b.len())))
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&rand::random()))
    }

    /// Reads a private key file.
    pub fn load(path: &Path) -> Result<SigningKey, SignatureError> {
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(
            &key_bytes(path)?,
        )))
    }

    /// The private key as a key file's text. Whoever writes it makes the
    /// file private (mode 0600).
    pub fn to_text(&self) -> String {
        format!("{}\n", BASE64.encode(self.0.to_bytes()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey::new(self.0.verifying_key())
    }

    /// The signature annotation's value for `layer`.
    pub fn sign(&self, layer: &LayerIdentity) -> String {
        let signature = self.0.sign(&layer.message());
        format!(
            "ed25519:{}:{}",
            self.public().id,
            BASE64.encode(signature.to_bytes())
        )
    }
}

impl PublicKey {
    fn new(key: ed25519_dalek::VerifyingKey) -> PublicKey {
        let id = hex::encode(&Digest::of(key.as_bytes()).0[..8]);
        PublicKey { key, id }
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<PublicKey, SignatureError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes(path)?).map_err(|e| {
            SignatureError::BadKey {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(PublicKey::new(key))
    }

    /// The key as a public key file's text.
    pub fn to_text(&self) -> String {
        format!("{}\n", BASE64.encode(self.key.as_bytes()))
    }

    /// The key's id, as signatures name it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The keys a node believes: a layer is vouched for when one of them
/// signed it.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// Reads every key file in `paths`.
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, SignatureError> {
        paths
            .iter()
            .map(|p| PublicKey::load(p))
            .collect::<Result<_, _>>()
            .map(TrustedKeys)
    }

    /// Checks the annotation `signature` (None when the layer has none)
    /// against `layer`; returns the id of the key that signed it.
    pub fn verify(
        &self,
        layer: &LayerIdentity,
        signature: Option<&str>,
    ) -> Result<String, SignatureError> {
        let value = signature.ok_or(SignatureError::Unsigned)?;
        if value.len() > MAX_ANNOTATION {
            return Err(SignatureError::Malformed(format!(
                "{} bytes, more than {MAX_ANNOTATION}",
                value.len()
            )));
        }
        let mut parts = value.splitn(3, ':');
        let (Some("ed25519"), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SignatureError::Malformed(format!(
                "expected ed25519:<key id>:<signature> in {} (key {})",
                annotations::SIGNATURE,
                value.split(':').nth(1).unwrap_or("?")
            )));
        };
        let key = self
            .0
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SignatureError::UnknownKey(id.to_string()))?;
        let bytes: [u8; 64] = BASE64
            .decode(encoded)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                SignatureError::Malformed("signature is not 64 bytes of base64".into())
            })?;
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        key.key
            .verify(&layer.message(), &signature)
            .map_err(|_| SignatureError::Invalid(id.to_string()))?;
        Ok(id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> LayerIdentity {
        LayerIdentity {
            blob: Digest::of(&[n]),
            toc: Digest::of(&[n, 1]),
            diff_id: Digest::of(&[n, 2]),
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_layer_and_a_trusted_key() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let trusted = TrustedKeys(vec![key.public()]);
        let signed = key.sign(&layer(1));
        assert_eq!(
            trusted.verify(&layer(1), Some(&signed)).unwrap(),
            key.public().id
        );

        let mut claimed = layer(1);
        claimed.diff_id = layer(9).diff_id;
        let cases: Vec<(LayerIdentity, Option<String>, &str)> = vec![
            (claimed, Some(signed.clone()), "does not match"),
            (layer(1), None, "not signed"),
            (layer(1), Some(other.sign(&layer(1))), "does not trust"),
            (layer(1), Some("rsa:abc:def".into()), "malformed"),
            (
                layer(1),
                Some(format!("ed25519:{}:AAAA", key.public().id)),
                "malformed",
            ),
            (layer(1), Some("x".repeat(1000)), "malformed"),
        ];
        for (identity, annotation, expected) in cases {
            let err = trusted
                .verify(&identity, annotation.as_deref())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{annotation:?}: {err}");
        }
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        std::fs::write(dir.path().join("k"), key.to_text()).unwrap();
        std::fs::write(dir.path().join("k.pub"), key.public().to_text()).unwrap();
        let loaded = SigningKey::load(&dir.path().join("k")).unwrap();
        let trusted = TrustedKeys::load(&[dir.path().join("k.pub")]).unwrap();
        assert!(trusted
            .verify(&layer(3), Some(&loaded.sign(&layer(3))))
            .is_ok());
        std::fs::write(dir.path().join("bad"), "AAAA").unwrap();
        assert!(PublicKey::load(&dir.path().join("bad")).is_err());
    }
}
