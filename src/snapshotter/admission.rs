//! Which layers this node serves lazily: the decision that keeps an image
//! from standing in for another image's layer.
//!
//! A lazily served layer is committed under the chain ID of its Prepare,
//! and every later image with that chain ID reuses it. So before a layer
//! is served, the node checks that the chain ID is the one its parent and
//! its claimed diff_id make, and (unless the node opted out with
//! `trust = "any"`) that a key the node trusts signed (blob, TOC, diff_id).
//! A layer that fails is not refused outright: containerd unpacks it the
//! ordinary way, checking its diff_id as it does so.

use super::lazy::LazyRequest;
use crate::digest::Digest;
use crate::format::{annotations, LayerIdentity, TrustedKeys};
use crate::image::chain_id;
use serde::{Deserialize, Serialize};

/// Which layers a node serves lazily (`[snapshotter] trust`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Only layers signed by a trusted key.
    #[default]
    Signed,
    /// Every converted layer whose chain ID matches its claimed diff_id.
    Any,
}

/// The node's rule for admitting layers to lazy service.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// Whether signatures are required.
    pub trust: Trust,
    /// The keys whose signatures are believed.
    pub keys: TrustedKeys,
}

impl Admission {
    /// Whether `request`, prepared over `parent` (the parent snapshot's
    /// name, empty for a bottom layer), may be served lazily; the reason if
    /// not. Returns the id of the key that signed it, when one did.
    ///
    /// Committed layers are named by their chain ID, by containerd's
    /// unpacker and by `loci pull`; containerd passes a snapshot that it
    /// committed itself (not one loci committed) as `NAMESPACE/ID/NAME`, so
    /// the parent's chain ID is its name's last component.
    pub fn admit(&self, request: &LazyRequest, parent: &str) -> Result<Option<String>, String> {
        let parent = parent.rsplit('/').next().unwrap_or(parent);
        let parse = |label: &str, value: &str| {
            value
                .parse::<Digest>()
                .map_err(|e| format!("label {label}: {e}"))
        };
        let diff_id =
            request.source.diff_id.as_deref().ok_or_else(|| {
                format!("no {} label naming its diff_id", annotations::UNCOMPRESSED)
            })?;
        let diff_id = parse(annotations::UNCOMPRESSED, diff_id)?;
        let expected = chain_id(parent, &diff_id);
        if request.target != expected {
            return Err(format!(
                "it would be committed as {}, but its parent and diff_id {diff_id} make {expected}",
                request.target
            ));
        }
        if self.trust == Trust::Any {
            return Ok(None);
        }
        let identity = LayerIdentity {
            blob: parse(super::lazy::LAYER_DIGEST, &request.source.layer_digest)?,
            toc: parse(annotations::TOC_DIGEST, &request.source.toc_digest)?,
            diff_id,
        };
        self.keys
            .verify(&identity, request.signature.as_deref())
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SigningKey;
    use crate::snapshotter::LazySource;

    fn request(target: &str, diff_id: &Digest, signature: Option<String>) -> LazyRequest {
        LazyRequest {
            target: target.to_string(),
            source: LazySource {
                image_ref: "127.0.0.1:5000/app:v1".into(),
                layer_digest: Digest::of(b"blob").to_string(),
                toc_digest: Digest::of(b"toc").to_string(),
                diff_id: Some(diff_id.to_string()),
                manifest_digest: None,
            },
            toc_offset: None,
            signature,
        }
    }

    #[test]
    fn only_signed_layers_committed_under_their_own_chain_id_are_admitted() {
        let key = SigningKey::generate();
        let stranger = SigningKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("k.pub");
        std::fs::write(&public, key.public().to_text()).unwrap();
        let signed = Admission {
            trust: Trust::Signed,
            keys: TrustedKeys::load(&[public]).unwrap(),
        };
        let any = Admission {
            trust: Trust::Any,
            keys: TrustedKeys::default(),
        };
        let diff_id = Digest::of(b"tar");
        let other_diff_id = Digest::of(b"another tar");
        let parent = Digest::of(b"parent chain").to_string();
        let identity = LayerIdentity {
            blob: Digest::of(b"blob"),
            toc: Digest::of(b"toc"),
            diff_id,
        };
        let good = key.sign(&identity);
        let own = chain_id(&parent, &diff_id);
        let cases = [
            (
                "signed, own chain",
                &signed,
                request(&own, &diff_id, Some(good.clone())),
                &parent,
                None,
            ),
            (
                "bottom layer",
                &signed,
                request(&diff_id.to_string(), &diff_id, Some(good.clone())),
                &String::new(),
                None,
            ),
            (
                "unsigned",
                &signed,
                request(&own, &diff_id, None),
                &parent,
                Some("not signed"),
            ),
            (
                "stranger's key",
                &signed,
                request(&own, &diff_id, Some(stranger.sign(&identity))),
                &parent,
                Some("does not trust"),
            ),
            (
                "signature of another diff_id",
                &signed,
                request(
                    &chain_id(&parent, &other_diff_id),
                    &other_diff_id,
                    Some(good.clone()),
                ),
                &parent,
                Some("does not match"),
            ),
            (
                "another layer's chain ID",
                &any,
                request(&chain_id(&parent, &other_diff_id), &diff_id, None),
                &parent,
                Some("make"),
            ),
            (
                "trust any, own chain",
                &any,
                request(&own, &diff_id, None),
                &parent,
                None,
            ),
        ];
        for (name, admission, request, parent, refused) in cases {
            let result = admission.admit(&request, parent);
            match refused {
                None => assert!(result.is_ok(), "{name}: {result:?}"),
                Some(why) => {
                    let err = result.expect_err(name);
                    assert!(err.contains(why), "{name}: {err}");
                }
            }
        }
        let mut no_diff_id = request(&own, &diff_id, Some(good));
        no_diff_id.source.diff_id = None;
        assert!(any.admit(&no_diff_id, &parent).is_err());
    }
}
