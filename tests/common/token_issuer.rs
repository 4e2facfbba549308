//! A token issuer for docker-registry's `auth: token`, started by tests of
//! token auth: ES256 tokens signed with a key and certificate it makes.

use super::base64;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A token issuer as a registry's `auth: token` realm: checks the Basic
/// credentials it is given, signs ES256 tokens (x5c: its self-signed
/// certificate, which is the registry's `rootcertbundle`) that live
/// `ttl_secs`, and counts what it issued.
pub struct TokenIssuer {
    pub addr: String,
    cert: PathBuf,
    /// Tokens issued so far.
    pub issued: Arc<AtomicU64>,
    /// The life of the tokens issued from now on.
    pub ttl_secs: Arc<AtomicU64>,
}

const SERVICE: &str = "loci-test-registry";
const ISSUER: &str = "loci-test-issuer";
/// distribution accepts a token this long past its `exp` (clock skew).
const REGISTRY_LEEWAY_SECS: u64 = 60;

impl TokenIssuer {
    pub fn start(dir: &Path, user: &'static str, password: &'static str) -> TokenIssuer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ISSUER);
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join("token-signer.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let x5c = base64(cert.der());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let issued = Arc::new(AtomicU64::new(0));
        let ttl_secs = Arc::new(AtomicU64::new(300));
        let (count, ttl) = (issued.clone(), ttl_secs.clone());
        let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            authorized = value.trim() == expected;
                        }
                    }
                }
                let (status, body) = if authorized {
                    let scope = query_param(&request_line, "scope").unwrap_or_default();
                    let access: Vec<serde_json::Value> = scope
                        .split(' ')
                        .filter_map(|s| {
                            let mut parts = s.splitn(3, ':');
                            let (kind, name, actions) =
                                (parts.next()?, parts.next()?, parts.next()?);
                            Some(serde_json::json!({
                                "type": kind, "name": name,
                                "actions": actions.split(',').collect::<Vec<_>>(),
                            }))
                        })
                        .collect();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let claims = serde_json::json!({
                        "iss": ISSUER, "sub": user, "aud": SERVICE,
                        "exp": now + ttl.load(Ordering::SeqCst) - REGISTRY_LEEWAY_SECS,
                        "nbf": now - 1, "iat": now, "jti": format!("t{n}"),
                        "access": access,
                    });
                    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                    header.x5c = Some(vec![x5c.clone()]);
                    let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
                    let expires_in = ttl.load(Ordering::SeqCst);
                    let body = serde_json::json!({ "token": token, "expires_in": expires_in });
                    ("200 OK", body.to_string())
                } else {
                    ("401 Unauthorized", "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenIssuer {
            addr,
            cert: cert_path,
            issued,
            ttl_secs,
        }
    }

    /// The registry config's `auth:` section for this issuer.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}",
            self.addr,
            self.cert.display()
        )
    }
}

/// A query parameter of an HTTP request line, percent-decoded.
fn query_param(request_line: &str, name: &str) -> Option<String> {
    let target = request_line.split(' ').nth(1)?;
    let url = reqwest::Url::parse(&format!("http://x{target}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
