//! A registry for the trace lookup's tests: a few paths served from
//! memory, one answer held back until another path is asked for, and a
//! log of what was asked.

use super::publish::{
    fallback_tag, EMPTY_JSON, EMPTY_MEDIA_TYPE, TRACE_ARTIFACT_TYPE, TRACE_BLOB_ANNOTATION,
};
use super::trace::{Access, Trace, TRACE_VERSION};
use crate::digest::Digest;
use crate::image::media_types;
use crate::registry::{Manifest, RegistryClient};
use bytes::Bytes;
use serde_json::json;
use std::io::{BufRead, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long the fake registry holds the artifact manifest back when
/// nobody asks for the blob: a lookup that waits for the manifest
/// before it asks takes this long.
pub(super) const HELD: Duration = Duration::from_secs(3);

/// Paths asked for, in order.
pub(super) type Asked = Arc<Mutex<Vec<String>>>;

/// A registry without the referrers API serving `paths` (path suffix,
/// body); the first path's answer waits until the second has been
/// asked for, or [`HELD`]. Returns its address and what it was asked.
pub(super) fn registry_holding(paths: Vec<(String, Vec<u8>)>) -> (String, Asked) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let asked = Arc::new((Mutex::new(false), Condvar::new()));
    let paths = Arc::new(paths);
    let log = Asked::default();
    let asked_paths = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (asked, paths, log) = (asked.clone(), paths.clone(), log.clone());
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let path = request.split(' ').nth(1).unwrap_or("");
                    log.lock().unwrap().push(path.to_string());
                    let served = paths.iter().position(|(p, _)| path.ends_with(p.as_str()));
                    let (lock, cvar) = &*asked;
                    if served == Some(0) {
                        let _held = cvar
                            .wait_timeout_while(lock.lock().unwrap(), HELD, |asked| !*asked)
                            .unwrap();
                    } else if served == Some(1) {
                        *lock.lock().unwrap() = true;
                        cvar.notify_all();
                    }
                    let (status, body): (&str, &[u8]) = match served {
                        Some(i) => ("200 OK", &paths[i].1),
                        None => ("404 Not Found", b""),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if conn
                        .write_all(head.as_bytes())
                        .and_then(|_| conn.write_all(body))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, asked_paths)
}

pub(super) fn client_of(addr: &str) -> RegistryClient {
    let options = crate::registry::RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let reference: crate::image::ImageRef = format!("{addr}/repo:t").parse().unwrap();
    match crate::image::ImageStore::open(&reference, &options, false).unwrap() {
        crate::image::ImageStore::Registry { client, .. } => client,
        _ => panic!("not a registry store"),
    }
}

pub(super) fn image() -> Manifest {
    let bytes = Bytes::from_static(b"{\"schemaVersion\":2}");
    Manifest {
        digest: Digest::of(&bytes),
        bytes,
        media_type: media_types::OCI_MANIFEST.into(),
    }
}

pub(super) fn trace(chunk: u32) -> Trace {
    Trace {
        pack: None,
        version: TRACE_VERSION,
        layers: vec![Digest::of(b"layer")],
        accesses: vec![Access {
            layer: 0,
            chunk,
            digest: Digest::of(b"chunk"),
            at_ms: 1,
            path: "bin/sh".into(),
        }],
        reads: Vec::new(),
    }
}

/// The fallback index, artifact manifest and trace bytes
/// `push_raw_trace` writes for a trace of `image`, the index naming
/// the blob `named` (the trace's own, or another).
pub(super) fn published(
    image: &Manifest,
    trace: &Trace,
    named: Option<Digest>,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let blob = trace.encode();
    let blob_digest = Digest::of(&blob);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "artifactType": TRACE_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": Digest::of(EMPTY_JSON).to_string(), "size": 2},
        "layers": [{"mediaType": TRACE_ARTIFACT_TYPE, "digest": blob_digest.to_string(), "size": blob.len()}],
        "subject": {"mediaType": image.media_type, "digest": image.digest.to_string(), "size": image.bytes.len()},
        "annotations": {TRACE_BLOB_ANNOTATION: blob_digest.to_string()},
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": [{
            "mediaType": media_types::OCI_MANIFEST,
            "artifactType": TRACE_ARTIFACT_TYPE,
            "digest": Digest::of(&manifest).to_string(),
            "size": manifest.len(),
            "annotations": {TRACE_BLOB_ANNOTATION: named.unwrap_or(blob_digest).to_string()},
        }],
    }))
    .unwrap();
    (index, manifest, blob)
}

pub(super) fn paths(
    image: &Manifest,
    index: Vec<u8>,
    manifest: Vec<u8>,
    blob: Vec<u8>,
) -> Vec<(String, Vec<u8>)> {
    vec![
        (format!("/manifests/{}", Digest::of(&manifest)), manifest),
        (format!("/blobs/{}", Digest::of(&blob)), blob),
        (format!("/manifests/{}", fallback_tag(&image.digest)), index),
    ]
}
