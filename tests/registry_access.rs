//! Reaching private registries as a node does: a real docker-registry
//! behind TLS with a CA the test makes, with htpasswd (Basic) auth, with
//! token auth whose tokens expire while a lazy mount reads, and behind a
//! mirror named in containerd's hosts.toml. Every command is typed as a
//! user types it; credentials come from the node config or the docker
//! config, never from the test's environment (`DOCKER_CONFIG` points at
//! a directory the test controls).

mod common;

use common::token_issuer::TokenIssuer;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

const NEEDS: &[&str] = &["docker-registry", "python3", "zstd"];

/// A fixture image as an OCI layout, and a place for the test's files.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        build_fixture(&dir.path().join("fixture"), "v1", &[]);
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn source(&self) -> String {
        format!("oci:{}:v1", self.path("fixture").display())
    }

    /// `loci ARGS` with the test's docker config directory.
    fn loci(&self, args: &[&str]) -> Command {
        let mut cmd = loci();
        cmd.args(args).env("DOCKER_CONFIG", self.path("docker"));
        cmd
    }

    /// Writes the docker config (`auths`) with these credentials.
    fn docker_login(&self, host: &str, user: &str, password: &str) {
        let auth = base64(format!("{user}:{password}").as_bytes());
        std::fs::write(
            self.path("docker/config.json"),
            serde_json::json!({ "auths": { host: { "auth": auth } } }).to_string(),
        )
        .unwrap();
    }

    /// A node config with its own cache, no read-ahead (so each read of
    /// a new place is a request), and `extra` appended.
    fn node_config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.path(&format!("{name}.toml"));
        write_config(&path, &self.path(&format!("{name}-cache")), 30);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replace("[fetch]\n", "[fetch]\namplify_bytes = 0\n");
        text.push_str(extra);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `loci mount` of `reference` with `args` before it.
    fn mount(&self, name: &str, args: &[&str], reference: &str) -> LociMount {
        let dir = self.path(&format!("{name}-mnt"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = self.loci(&["mount"]);
        cmd.args(args).arg(reference).arg(&dir);
        LociMount::start_with(cmd, &dir, &self.path(&format!("{name}.log")))
    }
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the fixture's merged tree holds, read through a mount.
fn assert_reads_the_image(mount: &Path) {
    assert_eq!(
        std::fs::read_to_string(mount.join("etc/hello.txt")).unwrap(),
        "hello again from layer 3\n"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("data/nested/a/b/c/d/e/deep.txt")).unwrap(),
        "deep\n"
    );
}

/// A CA, a server certificate it signed for 127.0.0.1 and a client
/// certificate it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "loci test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "node-7");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
        let pki = Pki {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        std::fs::write(&pki.client_cert, client.pem()).unwrap();
        std::fs::write(&pki.client_key, client_key.serialize_pem()).unwrap();
        pki
    }

    /// The registry's `http: tls:` section: its certificate, and client
    /// certificates required, signed by the CA.
    fn registry_tls(&self) -> String {
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }
}

/// The registry's host directory under a `certs.d` root, as containerd
/// names it.
fn host_dir(root: &Path, addr: &str) -> PathBuf {
    let dir = root.join(addr);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_registry_behind_a_private_ca_is_reached_with_the_ca_its_host_directory_names() {
    let test = "a_registry_behind_a_private_ca_is_reached_with_the_ca_its_host_directory_names";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let work = Work::new();
    let pki = Pki::new(work.dir.path());
    let registry = Registry::start_configured(&pki.registry_tls(), "");
    let target = format!("{}/fixture:loci", registry.addr);
    let certs = work.path("certs.d");
    let hosts = certs.to_str().unwrap();

    // Without the CA, TLS is refused: the node's trust is not widened by
    // anything but its configuration.
    let out = work
        .loci(&["convert", &work.source(), &target])
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // containerd's hosts.toml: the server and the CA that signed it; the
    // registry also wants a client certificate.
    let dir = host_dir(&certs, &registry.addr);
    std::fs::copy(&pki.ca, dir.join("registry-ca.pem")).unwrap();
    let ca_only = format!(
        "server = \"https://{}\"\n\n[host.\"https://{}\"]\n  ca = \"registry-ca.pem\"\n",
        registry.addr, registry.addr
    );
    std::fs::write(dir.join("hosts.toml"), &ca_only).unwrap();
    let convert = || {
        work.loci(&["convert", "--hosts-dir", hosts, &work.source(), &target])
            .output()
            .unwrap()
    };
    let err = failed(&convert());
    assert!(err.contains("network error"), "{err}");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "{ca_only}  client = [[{:?}, {:?}]]\n",
            pki.client_cert, pki.client_key
        ),
    )
    .unwrap();
    let out = convert();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Docker's layout (`*.crt` CAs, `*.cert` + `*.key` client pairs in the
    // host directory, no hosts.toml) serves a lazy mount just as well;
    // what it reads are range requests.
    std::fs::remove_file(dir.join("hosts.toml")).unwrap();
    std::fs::rename(dir.join("registry-ca.pem"), dir.join("ca.crt")).unwrap();
    std::fs::copy(&pki.client_cert, dir.join("node.cert")).unwrap();
    std::fs::copy(&pki.client_key, dir.join("node.key")).unwrap();
    // Over TLS the registry offers HTTP/2 and loci takes it; the node
    // config's `http2 = false` keeps HTTP/1.1.
    for (name, extra, proto) in [
        ("tls", "", "HTTP/2.0"),
        ("tls-h1", "[registry]\nhttp2 = false\n", "HTTP/1.1"),
    ] {
        let before = registry.daemon.log_text().len();
        let config = work.node_config(name, extra);
        let mut mount = work.mount(
            name,
            &["--hosts-dir", hosts, "--config", config.to_str().unwrap()],
            &target,
        );
        assert_reads_the_image(&mount.dir);
        mount.stop();
        let log = settled_log(&registry)[before..].to_string();
        let range_reads: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("/blobs/sha256:") && l.contains("\" 206 "))
            .collect();
        assert!(
            !range_reads.is_empty(),
            "no range reads in the registry log:\n{log}"
        );
        assert!(
            range_reads
                .iter()
                .all(|l| l.contains(&format!(" {proto}\" 206 "))),
            "{name}: range reads not all over {proto}:\n{}",
            range_reads.join("\n")
        );
    }

    // skip_verify is the node's explicit choice, per host.
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    let inspect = || {
        work.loci(&["inspect", "--hosts-dir", hosts, &target])
            .output()
            .unwrap()
    };
    assert!(failed(&inspect()).to_lowercase().contains("certificate"));
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "skip_verify = true\nclient = [[{:?}, {:?}]]\n",
            pki.client_cert, pki.client_key
        ),
    )
    .unwrap();
    let out = inspect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mirrors_serve_first_and_the_registry_serves_once_the_mirror_is_gone() {
    let test = "mirrors_serve_first_and_the_registry_serves_once_the_mirror_is_gone";
    if !require(test, &[NEEDS, &["skopeo"]].concat(), true) || !require_fuse(test) {
        return;
    }
    let work = Work::new();
    let upstream = Registry::start();
    let mut mirror = Registry::start();
    let image = format!("{}/fixture:loci", upstream.addr);
    run(&mut work.loci(&["convert", "--plain-http", &work.source(), &image]));
    run(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{image}"),
        &format!("docker://{}/fixture:loci", mirror.addr),
    ]));
    let certs = work.path("certs.d");
    // Plain HTTP here because the node's hosts.toml says http://, for the
    // mirror and the registry alike: no --plain-http.
    std::fs::write(
        host_dir(&certs, &upstream.addr).join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            upstream.addr, mirror.addr
        ),
    )
    .unwrap();
    let hosts = certs.to_str().unwrap();
    // The image's manifest and blobs; a trace lookup the mirror answers
    // 404 goes on to the registry, as any content the mirror lacks would.
    let fixture_requests = |registry: &Registry, from: usize| {
        registry.daemon.log_text()[from..]
            .lines()
            .filter(|l| l.starts_with("127.0.0.1 - "))
            .filter(|l| {
                l.contains("/v2/fixture/blobs/") || l.contains("/v2/fixture/manifests/loci")
            })
            .count()
    };

    let (up, mir) = (
        upstream.daemon.log_text().len(),
        mirror.daemon.log_text().len(),
    );
    let config = work.node_config("via-mirror", "");
    let mut mount = work.mount(
        "via-mirror",
        &["--hosts-dir", hosts, "--config", config.to_str().unwrap()],
        &image,
    );
    assert_reads_the_image(&mount.dir);
    mount.stop();
    assert_eq!(
        fixture_requests(&upstream, up),
        0,
        "the registry was asked:\n{}",
        &upstream.daemon.log_text()[up..]
    );
    assert!(
        fixture_requests(&mirror, mir) >= 3,
        "the mirror was not asked"
    );

    mirror.daemon.stop();
    let up = upstream.daemon.log_text().len();
    let config = work.node_config("mirror-gone", "");
    let mut mount = work.mount(
        "mirror-gone",
        &["--hosts-dir", hosts, "--config", config.to_str().unwrap()],
        &image,
    );
    assert_reads_the_image(&mount.dir);
    mount.stop();
    assert!(
        fixture_requests(&upstream, up) >= 3,
        "the registry did not serve after the mirror stopped"
    );
}

#[test]
fn basic_auth_credentials_come_from_the_node_config_and_are_never_logged() {
    let test = "basic_auth_credentials_come_from_the_node_config_and_are_never_logged";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let work = Work::new();
    let password = "pw-7c1e9d";
    let htpasswd = work.path("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("loci:{}\n", bcrypt::hash(password, 5).unwrap()),
    )
    .unwrap();
    let registry = Registry::start_configured(
        "",
        &format!(
            "auth:\n  htpasswd:\n    realm: loci-test\n    path: {}",
            htpasswd.display()
        ),
    );
    let image = format!("{}/fixture:loci", registry.addr);
    let convert = || {
        work.loci(&["convert", "--plain-http", &work.source(), &image])
            .output()
            .unwrap()
    };
    let err = failed(&convert());
    assert!(
        err.contains("401") && err.contains(&format!("no credentials for {}", registry.addr)),
        "{err}"
    );
    work.docker_login(&registry.addr, "loci", password);
    let out = convert();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(work.path("docker/config.json")).unwrap();

    // The node config's credentials, and nothing else, reach the mount.
    let auth = |password: &str| {
        format!(
            "\n[registry.auth.\"{}\"]\nusername = \"loci\"\npassword = \"{password}\"\n",
            registry.addr
        )
    };
    let wrong = work.node_config("wrong", &auth("not-it"));
    std::fs::create_dir(work.path("wrong-mnt")).unwrap();
    let out = work
        .loci(&[
            "mount",
            "--plain-http",
            "--config",
            wrong.to_str().unwrap(),
            &image,
        ])
        .arg(work.path("wrong-mnt"))
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("were refused"), "{err}");

    let config = work.node_config("basic", &auth(password));
    let mut mount = work.mount(
        "basic",
        &["--plain-http", "--config", config.to_str().unwrap()],
        &image,
    );
    assert_reads_the_image(&mount.dir);
    mount.stop();
    let log = mount.daemon.log_text();
    assert!(!log.contains(password), "the password was logged:\n{log}");

    // A docker credential helper named by the docker config (`credHelpers`)
    // is asked too; here a script the test writes.
    let helpers = work.path("helpers");
    std::fs::create_dir(&helpers).unwrap();
    let helper = helpers.join("docker-credential-loci-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nserver=$(cat)\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"loci\",\"Secret\":\"{password}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        work.path("docker/config.json"),
        serde_json::json!({ "credHelpers": { &registry.addr: "loci-test" } }).to_string(),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let config = work.node_config("helper", "");
    let dir = work.path("helper-mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = work.loci(&[
        "mount",
        "--plain-http",
        "--config",
        config.to_str().unwrap(),
    ]);
    cmd.arg(&image).arg(&dir).env("PATH", path);
    let mut mount = LociMount::start_with(cmd, &dir, &work.path("helper.log"));
    assert_reads_the_image(&mount.dir);
    mount.stop();
}

#[test]
fn token_auth_tokens_that_expire_while_a_mount_reads_are_renewed() {
    let test = "token_auth_tokens_that_expire_while_a_mount_reads_are_renewed";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let work = Work::new();
    let issuer = TokenIssuer::start(work.dir.path(), "loci", "token-pw-41d");
    let registry = Registry::start_configured("", &issuer.registry_auth());
    let image = format!("{}/fixture:loci", registry.addr);
    work.docker_login(&registry.addr, "loci", "token-pw-41d");
    run(&mut work.loci(&["convert", "--plain-http", &work.source(), &image]));
    assert!(issuer.issued.load(Ordering::SeqCst) >= 1);

    // From here on tokens live 3 s. The mount reads one file, waits past
    // its token's life, then reads another layer's file: the registry
    // refuses the old token and the mount asks for a new one.
    issuer.ttl_secs.store(3, Ordering::SeqCst);
    let config = work.node_config("token", "");
    let mut mount = work.mount(
        "token",
        &["--plain-http", "--config", config.to_str().unwrap()],
        &image,
    );
    assert_eq!(
        std::fs::read_to_string(mount.dir.join("etc/hello.txt")).unwrap(),
        "hello again from layer 3\n"
    );
    let issued = issuer.issued.load(Ordering::SeqCst);
    let before = registry.daemon.log_text().len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        std::fs::read_to_string(mount.dir.join("data/nested/a/b/c/d/e/deep.txt")).unwrap(),
        "deep\n"
    );
    let text = std::fs::read(mount.dir.join("data/big-text.txt")).unwrap();
    let expected: Vec<u8> = (0..90000)
        .flat_map(|i| format!("line {i} of a compressible text file\n").into_bytes())
        .collect();
    assert!(text == expected, "data/big-text.txt differs");
    mount.stop();
    let log = registry.daemon.log_text()[before..].to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("/blobs/sha256:") && l.contains(" 401 ")),
        "the registry never refused an expired token:\n{log}"
    );
    assert!(
        issuer.issued.load(Ordering::SeqCst) > issued,
        "no new token after expiry"
    );
}
