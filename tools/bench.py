#!/usr/bin/python3
"""loci's cold-start benchmark: realistic images started cold in every mode,
side by side with peers, in one run on one machine.

Starts a private docker-registry (127.0.0.1, or behind a shaped link),
containerd (own config, root, state and socket) and `loci snapshotter`, all
in a temp dir; builds the images (cached by content under
$LOCI_IMAGE_CACHE, default /var/tmp/loci-images), pushes each, converts it,
then measures each start from a clean state (images and snapshots removed,
chunk caches emptied, page cache dropped):

  overlayfs   ctr images pull + ctr run              (containerd's default)
  loci        loci pull + ctr run --snapshotter loci, empty chunk cache
  loci-trace  the same with the image's start trace published (recorded by
              a first run through `loci trace record`, with its pack: the
              traced chunks recompressed at `[prefetch] pack_level`) and
              replayed
  loci-trace-layers  loci-trace replaying the trace from the layers' own
              frames, not its pack (`[prefetch] replay_packs = false`)
  loci-ordered  the same with the trace-ordered image (`loci convert
              --trace-of`: the traced files first in each layer) and its trace
              and pack (`--pack-level` sets the level of both packs)
  loci-warm   loci again with the chunk cache of the previous loci run
  loci-native the image pulled lazily and started once, its layers then
              completed in the background, verified and laid out as plain
              directories; the start timed is the next one (pull not
              counted, page cache dropped), on those directories with no
              FUSE: against overlayfs' start
  loci-fs     at the filesystem level: `loci mount` of the converted image,
              the command run in a chroot on an overlay over the mount
  loci-fs-http1  loci-fs with `[registry] http2 = false` (with --tls only:
              HTTP/2 is negotiated in the TLS handshake; not run by default)
  nydus-fs    the same with Nydus: `nydus-image create` of the unpacked
              image, blob and bootstrap pushed to the same registry, `nydusd`
              FUSE with its registry backend (bootstrap downloaded first)

Peers are used where the machine has them (nydusd and nydus-image on PATH
or in /opt/nydus/bin; stargz needs its snapshotter daemon
containerd-stargz-grpc, which Debian does not package: ctr-remote alone
cannot start anything lazily). The run says which it found.

Images (--images): python (python3 with numpy, pandas, scipy, matplotlib,
sklearn: ~1.3 GB), nginx (started and probed over HTTP), jre
(default-jre-headless running a class), busybox (a plain shell), fixture
(loci's multi-layer test image). --quick is busybox and fixture, once.

Output in --out DIR: bench.json (one row per image and mode: image, mode,
pull_s, start_s, total_s, bytes_fetched, ratio_to_overlayfs, ratio_to_warm
(total against loci-warm's), fetched_to_opened (bytes fetched against what
the files the start reads take compressed, from the trace and the TOCs:
the least a start can fetch), node_cpu_s and registry_cpu_s (CPU seconds
the whole node, and the registry with the delay line, used during the
timed start: the registry shares this node's cores here, a remote one
would not), with runs, spread and the link; medians over --runs),
bench-runs.json (every run, the opened sizes and the conversions:
loci's and nydus-image's MB of tar per CPU-second on the same image) and
bench.png (bars of total time per image and mode). Bytes fetched are read
from the registry's access log.

With --link RATE,RTT (e.g. 200mbit,10ms) the registry runs in a network
namespace this script creates, behind a veth pair shaped with tc (netem
for rate and delay where the kernel has it; else tbf for the rate and
tools/delay-proxy.py, a userspace delay line in front of the registry,
for the round trip, which the run reports); the namespace is removed
afterwards, even on failure.

With --tls the registry serves HTTPS with a certificate from a CA made
for the run (given to loci and containerd through a certs.d directory;
skopeo pushes without verifying it); nydus-fs is not run then.

Usage: tools/bench.py [--quick] [--link BW,RTT] [--tls] [--images LIST]
         [--modes LIST] [--runs N] [--out DIR] [--loci PATH] [--keep]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from harness import drop_caches, free_port, push_blob, start_registry, tear_down, wait_for  # noqa: E402

# loci-warm runs right after loci-trace: its cache is that of the same image.
ALL_MODES = ["overlayfs", "loci", "loci-trace-layers", "loci-trace", "loci-warm", "loci-ordered", "loci-native",
             "loci-fs", "loci-fs-http1", "nydus-fs"]
# Modes that only mean something over TLS (--tls), not run by default.
TLS_MODES = ["loci-fs-http1"]
PYTHON_PACKAGES = "python3,python3-numpy,python3-pandas,python3-scipy,python3-matplotlib,python3-sklearn"

# What each image is built from and the work its start does (to its exit).
IMAGES = {
    "python": {"packages": PYTHON_PACKAGES,
               "cmd": "python3 -c 'import numpy, pandas, scipy.stats, sklearn.linear_model; "
                      "print(numpy.arange(10).sum(), pandas.__version__)'"},
    "nginx": {"packages": "nginx,curl",
              "cmd": "nginx -t -q && nginx && curl -sf -o /dev/null http://127.0.0.1/ && nginx -s quit "
                     "&& while [ -e /run/nginx.pid ]; do sleep 0.05; done && echo served"},
    "jre": {"packages": "default-jre-headless",
            "cmd": "java -Xshare:auto -XX:TieredStopAtLevel=1 -cp /opt/bench Hello"},
    "busybox": {"busybox": "find / -xdev -type f | wc -l; sha256sum /bin/busybox; "
                           "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i"},
    "fixture": {},
}
# The fixture's own command is an interactive shell: give it work to do.
FIXTURE_COMMAND = ["/bin/sh", "-c", "cat /etc/hello.txt; sha256sum /data/big-random.bin /bin/busybox"]
QUICK_IMAGES = ["busybox", "fixture"]


def find_tool(name):
    return shutil.which(name) or next((p for p in [f"/opt/nydus/bin/{name}"] if os.access(p, os.X_OK)), None)


def find_peers():
    """Which peers this machine can run, and why not where it cannot."""
    peers = {}
    nydusd, nydus_image = find_tool("nydusd"), find_tool("nydus-image")
    if nydusd and nydus_image:
        version = subprocess.run([nydusd, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
        line = next((l for l in version.decode().splitlines() if "Version" in l), "nydusd").strip()
        peers["nydus"] = {"found": True, "nydusd": nydusd, "nydus-image": nydus_image, "version": line}
    else:
        peers["nydus"] = {"found": False, "why": "nydusd/nydus-image not found "
                          "(cargo install nydus-rs --version 2.2.0 --locked --root /opt/nydus)"}
    ctr_remote, stargz = shutil.which("ctr-remote"), shutil.which("containerd-stargz-grpc")
    peers["stargz"] = {"found": False, "why": (
        "containerd-stargz-grpc (stargz's snapshotter daemon) not found; "
        + ("ctr-remote is here but only converts" if ctr_remote else "ctr-remote not found either")
        if not stargz else "containerd-stargz-grpc found, but this bench does not drive it yet")}
    return peers


class Env:
    """The processes, namespace and temp dir of one benchmark run."""

    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="loci-bench-")
        self.log = open(os.path.join(self.work, "log"), "w")
        self.procs = []
        self.loci = args.loci
        # Extra `loci convert` options (e.g. a chunk size) for every conversion.
        self.convert_args = args.convert_args.split() if args.convert_args else []
        # Extra `[fetch]` lines (TOML) for the `loci mount` modes.
        self.fetch_config = args.fetch_config
        self.netns = None
        self.delay_line = None
        self.delay_proc = None
        self.link_note = "loopback"
        # With --tls: containerd's certs.d directory naming the registry's CA.
        self.certs = None

    def spawn(self, cmd, name):
        path = os.path.join(self.work, f"{name}-{len(self.procs)}.log")
        f = open(path, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=f)
        p.log_path = path
        self.procs.append(p)
        return p

    def run(self, *cmd, **kw):
        return subprocess.run(list(cmd), check=True, stdin=subprocess.DEVNULL,
                              stdout=kw.get("stdout", self.log), stderr=self.log)

    def shaped_link(self, link):
        """A namespace for the registry behind a shaped veth pair; returns
        the registry's address as clients reach it, and the address it
        listens on (behind the delay line, when there is one)."""
        rate, rtt = link.split(",")
        m = re.fullmatch(r"([0-9.]+)(us|ms|s)?", rtt)
        if not m:
            raise ValueError(f"--link: round trip {rtt!r} is not a time like 10ms")
        rtt_ms = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, None: 1}[m.group(2)]
        half = f"{rtt_ms / 2}ms"
        tag = os.getpid() % 10000
        self.netns = f"loci-bench-{tag}"
        host, peer = f"lbh{tag}", f"lbr{tag}"
        subnet = f"10.231.{tag % 250}"
        for cmd in (["ip", "netns", "add", self.netns],
                    ["ip", "link", "add", host, "type", "veth", "peer", "name", peer],
                    ["ip", "link", "set", peer, "netns", self.netns],
                    ["ip", "addr", "add", f"{subnet}.1/30", "dev", host],
                    ["ip", "link", "set", host, "up"],
                    ["ip", "netns", "exec", self.netns, "ip", "addr", "add", f"{subnet}.2/30", "dev", peer],
                    ["ip", "netns", "exec", self.netns, "ip", "link", "set", peer, "up"],
                    ["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
                    ):
            self.run(*cmd)
        # Shape both directions: netem for delay and rate where the kernel
        # has it; else tbf for the rate and a userspace delay line in front
        # of the registry for the round trip (and say so).
        self.link_note = f"{rate}, rtt {rtt}"
        public = f"{subnet}.2:5000"
        for dev, prefix in ((host, []), (peer, ["ip", "netns", "exec", self.netns])):
            netem = prefix + ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", half, "rate", rate]
            if subprocess.run(netem, stdout=self.log, stderr=self.log).returncode != 0:
                self.run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                         "burst", "256kbit", "latency", "100ms")
                self.delay_line = True
        if self.delay_line:
            self.delay_proc = self.spawn(["ip", "netns", "exec", self.netns, sys.executable,
                                         os.path.join(ROOT, "tools/delay-proxy.py"),
                                         public, "127.0.0.1:5001", str(rtt_ms / 2)], "delay-proxy")
            self.link_note = f"{rate} (tbf), rtt {rtt} (delay line: no netem in this kernel)"
            return public, "127.0.0.1:5001"
        return public, public

    def start_registry(self):
        if self.args.link:
            self.addr, listen = self.shaped_link(self.args.link)
        else:
            self.addr = listen = f"127.0.0.1:{free_port()}"
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        tls = self.registry_certificate() if self.args.tls else None
        self.registry = start_registry(self.work, listen, os.path.join(self.work, "registry"),
                                       lambda cmd: self.spawn(cmd, "registry"), prefix, reach=self.addr, tls=tls)
        self.registry_log = os.path.join(self.work, f"registry-{len(self.procs) - 1}.log")

    def registry_certificate(self):
        """A CA and a certificate it signed for the registry's address (as
        clients reach it), made with openssl; the CA goes in a certs.d
        directory (`HOST:PORT/ca.crt`, as containerd reads it) that every
        client is given. Returns the (certificate, key) paths."""
        d = os.path.join(self.work, "pki")
        os.makedirs(d)
        ip = self.addr.rsplit(":", 1)[0]
        ca, ca_key, crt, key, csr = (os.path.join(d, n) for n in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr"))
        ext = os.path.join(d, "san.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName = IP:{ip}\n")
        self.run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-days", "2", "-subj", "/CN=loci bench CA", "-keyout", ca_key, "-out", ca)
        self.run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", f"/CN={ip}", "-keyout", key, "-out", csr)
        self.run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "2", "-extfile", ext, "-out", crt)
        self.certs = os.path.join(self.work, "certs.d")
        host_dir = os.path.join(self.certs, self.addr)
        os.makedirs(host_dir)
        shutil.copy(ca, os.path.join(host_dir, "ca.crt"))
        # A host entry too: with the server alone, containerd 1.6 still
        # takes 127.0.0.1 for plain HTTP.
        with open(os.path.join(host_dir, "hosts.toml"), "w") as f:
            f.write(f'server = "https://{self.addr}"\nca = "ca.crt"\n\n'
                    f'[host."https://{self.addr}"]\n  ca = "ca.crt"\n')
        return crt, key

    def cpu_now(self):
        """CPU seconds used so far: by the whole node (every core's busy
        time in /proc/stat) and by the registry and the delay line, which
        share this node's cores here but would not in production."""
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
        node = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        serving = process_cpu(self.registry.pid)
        if self.delay_proc:
            serving += process_cpu(self.delay_proc.pid)
        return node, serving

    def cpu_begin(self):
        """Marks the start of a timed start for `cpu_end`."""
        self.cpu_mark = self.cpu_now()

    def cpu_end(self):
        """The node's and the registry's (with the delay line's) CPU seconds
        since `cpu_begin`, kept for the run's row."""
        (node0, serving0), (node1, serving1) = self.cpu_mark, self.cpu_now()
        self.cpu_last = {"node_cpu_s": node1 - node0, "registry_cpu_s": serving1 - serving0}

    def registry_flags(self):
        """How loci and ctr reach the registry: its CA (--tls) or plain HTTP."""
        return ["--hosts-dir", self.certs] if self.certs else ["--plain-http"]

    def registry_bytes(self, since):
        """Bytes of blob GETs in the registry log after offset `since`."""
        with open(self.registry_log) as f:
            f.seek(since)
            text = f.read()
        return sum(int(m.group(1)) for m in re.finditer(r'"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 20[06] (\d+)', text))

    def registry_log_size(self):
        return os.path.getsize(self.registry_log)

    def push_blob(self, repo, path):
        """Uploads a file as a blob of `repo` (monolithic upload); returns its digest."""
        with open(path, "rb") as f:
            return push_blob(self.addr, repo, f.read())

    def fetch_blob(self, repo, digest, path):
        with urllib.request.urlopen(f"http://{self.addr}/v2/{repo}/blobs/{digest}") as r, open(path, "wb") as f:
            shutil.copyfileobj(r, f)

    def signing_key(self):
        """The key this run's conversions sign with and its snapshotter
        trusts (made on first use)."""
        key = os.path.join(self.work, "sign.key")
        if not os.path.exists(key):
            self.run(self.loci, "key", "generate", key)
        return key

    def start_snapshotter(self, fresh_cache, prefetch=True, completion=False, packs=True):
        cache = os.path.join(self.work, "loci-cache")
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        cfg = os.path.join(self.work, "snapshotter.toml")
        with open(cfg, "w") as f:
            f.write(f'[cache]\ndir = "{cache}"\nmemory_bytes = 268435456\ndisk_bytes = 21474836480\n'
                    f'[prefetch]\nenabled = {"true" if prefetch else "false"}\n'
                    + ("" if packs else "replay_packs = false\n")
                    + (f"{self.args.prefetch_config}\n" if self.args.prefetch_config else "")
                    # Starts only: completion waits for a start to be over,
                    # and its download is not a start's (but loci-native's).
                    + (f'[completion]\nquiet_secs = 1\n' if completion else f'[completion]\nenabled = false\n')
                    + (f'[registry]\nhosts_dir = "{self.certs}"\n' if self.certs else "")
                    + (f'[snapshotter]\nplain_http_registries = ["{self.addr}"]\n' if not self.certs else "[snapshotter]\n")
                    + f'trusted_keys = ["{self.signing_key()}.pub"]\n')
        self.snap_sock = os.path.join(self.work, "loci.sock")
        self.snapshotter = self.spawn([self.loci, "snapshotter", "--address", self.snap_sock,
                                       "--root", os.path.join(self.work, "loci-root"), "--config", cfg], "snapshotter")
        wait_for(lambda: os.path.exists(self.snap_sock), "loci snapshotter")
        if hasattr(self, "sock"):
            # containerd redials a restarted proxy plugin after a backoff:
            # wait until it answers again, outside any timing.
            # (A Prepare reaches the snapshotter; a listing does not.)
            probe = ["ctr", "--address", self.sock, "--namespace", "probe", "snapshots", "--snapshotter", "loci"]
            key = f"probe-{len(self.procs)}"
            wait_for(lambda: subprocess.run(probe + ["prepare", key], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL).returncode == 0,
                     "containerd's connection to the restarted snapshotter", timeout=120)
            subprocess.run(probe + ["rm", key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_snapshotter(self):
        self.snapshotter.send_signal(signal.SIGTERM)
        self.snapshotter.wait(timeout=60)
        if os.path.exists(self.snap_sock):
            os.unlink(self.snap_sock)

    def start_containerd(self):
        d = os.path.join(self.work, "containerd")
        os.makedirs(d)
        with open(os.path.join(ROOT, "fixtures/containerd.toml")) as f:
            cfg = f.read().replace("@DIR@", d).replace(
                "@PROXY_PLUGINS@", f'[proxy_plugins.loci]\n  type = "snapshot"\n  address = "{self.snap_sock}"\n')
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(cfg)
        self.sock = os.path.join(d, "containerd.sock")
        self.containerd = self.spawn(["containerd", "--config", path], "containerd")
        wait_for(lambda: os.path.exists(self.sock), "containerd")

    def ctr(self, ns, *args):
        return self.run("ctr", "--address", self.sock, "--namespace", ns, *args)

    def close(self, failed=False):
        """Stops everything; the work dir (logs) goes unless --keep, or
        the run failed."""
        tear_down(self.work, self.procs)
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns])  # removes the veth pair too
        if not (self.args.keep or failed):
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"kept {self.work}", file=sys.stderr)


def build_layout(env, name):
    """The image's OCI layout and tag, built (or reused: cached by content)."""
    spec = IMAGES[name]
    if "packages" in spec:
        cache = os.environ.get("LOCI_IMAGE_CACHE", "/var/tmp/loci-images")
        out = os.path.join(cache, name)
        extra = []
        if name == "jre":
            extra = ["--add", jre_class_dir(env)]
        env.run(os.path.join(ROOT, "tools/make-debian-image.sh"), out, name, spec["packages"],
                "--cmd", spec["cmd"], *extra)
        return os.path.join(out, "layout"), name
    layout = os.path.join(env.work, f"layout-{name}")
    extra = ["--busybox", spec["busybox"]] if "busybox" in spec else ["--big-mib", "16"]
    env.run(sys.executable, os.path.join(ROOT, "tools/make-fixture-image.py"), layout, "--tag", name, *extra)
    return layout, name


JAVA_HELLO = """
public class Hello {
    public static void main(String[] args) throws Exception {
        java.util.Map<String, Integer> counts = new java.util.TreeMap<>();
        for (String w : "the quick brown fox jumps over the lazy dog the end".split(" "))
            counts.merge(w, 1, Integer::sum);
        String json = new StringBuilder().append(counts).toString();
        java.security.MessageDigest md = java.security.MessageDigest.getInstance("SHA-256");
        System.out.println(json + " " + java.util.HexFormat.of().formatHex(md.digest(json.getBytes())));
    }
}
"""


def jre_class_dir(env):
    """/opt/bench/Hello.class for the JVM image, compiled here once (the
    JRE cannot compile); cached next to the image."""
    cache = os.environ.get("LOCI_IMAGE_CACHE", "/var/tmp/loci-images")
    out = os.path.join(cache, "jre", "add")
    target = os.path.join(out, "opt", "bench", "Hello.class")
    if not os.path.exists(target):
        javac = shutil.which("javac")
        if not javac:
            raise RuntimeError("the jre image needs javac on this machine to build its class (apt install default-jdk-headless)")
        src = os.path.join(env.work, "Hello.java")
        with open(src, "w") as f:
            f.write(JAVA_HELLO)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        env.run(javac, "--release", "17", "-d", os.path.dirname(target), src)
    return out


def image_command(name, config_cmd):
    return FIXTURE_COMMAND if name == "fixture" else config_cmd


def read_command(env, ref):
    """The image's entrypoint + cmd, read from its config through skopeo."""
    out = subprocess.run(["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{ref}"],
                         check=True, stdout=subprocess.PIPE, stderr=env.log).stdout
    config = json.loads(out).get("config", {})
    return (config.get("Entrypoint") or []) + (config.get("Cmd") or [])


class Image:
    """One image pushed, converted and prepared for every mode."""

    def __init__(self, env, name, modes, quick=False):
        self.name = name
        layout, tag = build_layout(env, name)
        self.original = f"{env.addr}/{name}:v1"
        self.converted = f"{env.addr}/{name}:loci"
        env.run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                f"docker://{self.original}")
        self.ordered = f"{env.addr}/{name}:ordered"
        t0, c0 = time.perf_counter(), children_cpu()
        out = subprocess.run([env.loci, "--log", "warn", "convert", *env.registry_flags(), *env.convert_args,
                              "--sign-key", env.signing_key(), self.original, self.converted],
                             check=True, stdout=subprocess.PIPE, stderr=env.log, text=True).stdout
        self.convert_s, self.convert_cpu_s = time.perf_counter() - t0, children_cpu() - c0
        self.tar_bytes = sum(float(m.group(1)) * 1e6 for m in re.finditer(r"([0-9.]+) MB tar", out))
        self.command = image_command(name, read_command(env, self.original))
        self.traced = False
        self.opened = {}
        if "nydus-fs" in modes:
            self.nydus = nydus_convert(env, name, layout, tag)
        if env.peers["nydus"]["found"]:
            self.side_by_side = convert_side_by_side(env, name, layout, tag, repeats=1 if quick else 3)


def nydus_convert(env, name, layout, tag):
    """Nydus' image of `layout`: the bootstrap and blob of the unpacked
    rootfs, pushed to the registry as blobs of nydus/NAME."""
    nydus_image = env.peers["nydus"]["nydus-image"]
    work = os.path.join(env.work, f"nydus-{name}")
    os.makedirs(work)
    rootfs = os.path.join(work, "rootfs")
    c0 = children_cpu()
    flatten(env, layout, tag, rootfs)
    unpack_cpu_s = children_cpu() - c0
    blobs = os.path.join(work, "blobs")
    os.makedirs(blobs)
    bootstrap = os.path.join(work, "bootstrap")
    # From the unpacked tree: nydus-image 2.2.0's tar-rafs blobs fail in
    # nydusd's registry backend here (a panic with RAFS v6, short reads
    # with v5), its directory path works.
    t0, c0 = time.perf_counter(), children_cpu()
    env.run(nydus_image, "create", "--fs-version", "5" if env.args.nydus_validate else "6",
            "--blob-dir", blobs, "--bootstrap", bootstrap,
            "--log-level", "warn", rootfs)
    convert_s, convert_cpu_s = time.perf_counter() - t0, children_cpu() - c0
    shutil.rmtree(rootfs)
    repo = f"nydus/{name}"
    for blob in os.listdir(blobs):
        env.push_blob(repo, os.path.join(blobs, blob))
    return {"repo": repo, "bootstrap": env.push_blob(repo, bootstrap), "convert_s": convert_s,
            "convert_cpu_s": convert_cpu_s, "unpack_cpu_s": unpack_cpu_s}


def convert_side_by_side(env, name, layout, tag, repeats=3):
    """Conversion CPU on the same input: `loci convert` from the local
    layout to a scratch layout, and nydus-image's `targz-rafs` conversion
    of the very same compressed layer files, alternating, `repeats` times
    each; medians of CPU seconds (user + system)."""
    nydus_image = env.peers["nydus"]["nydus-image"]
    layers = layout_layers(layout, tag)
    kind_of = ["targz-rafs" if media_type.endswith("gzip") else None if media_type.endswith("zstd")
               else "tar-rafs" for _, media_type in layers]
    if None in kind_of:
        why = "a layer's compression is not one nydus-image reads (gzip or none)"
        print(f"{name}: conversion side by side skipped: {why}", file=sys.stderr)
        return {"skipped": why}
    work = os.path.join(env.work, f"side-by-side-{name}")
    loci_cpu, nydus_cpu = [], []
    for _ in range(repeats):
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        c0 = children_cpu()
        env.run(env.loci, "--log", "warn", "convert", f"oci:{layout}:{tag}", f"oci:{work}/loci:{tag}")
        loci_cpu.append(children_cpu() - c0)
        c0 = children_cpu()
        for i, ((blob, _), kind) in enumerate(zip(layers, kind_of)):
            blobs = os.path.join(work, f"nydus-{i}")
            os.makedirs(blobs)
            try:
                env.run(nydus_image, "create", "--type", kind, "--fs-version", "6", "--blob-dir", blobs,
                        "--bootstrap", os.path.join(blobs, "bootstrap"), "--log-level", "warn", blob)
            except subprocess.CalledProcessError as e:
                # nydus-image 2.2's tar paths refuse some layers (the
                # fixture's plain tar here): the comparison is skipped.
                why = f"nydus-image {kind} failed on layer {i} (exit {e.returncode})"
                print(f"{name}: conversion side by side skipped: {why}", file=sys.stderr)
                shutil.rmtree(work, ignore_errors=True)
                return {"skipped": why}
        nydus_cpu.append(children_cpu() - c0)
    shutil.rmtree(work, ignore_errors=True)
    return {"loci_cpu_s": statistics.median(loci_cpu), "nydus_cpu_s": statistics.median(nydus_cpu),
            "loci_runs": loci_cpu, "nydus_runs": nydus_cpu}


def layout_layers(layout, tag):
    """(path, media type) of each layer of `tag` in an OCI layout."""
    def blob(digest):
        return os.path.join(layout, "blobs", *digest.split(":", 1))
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    with open(blob(desc["digest"])) as f:
        manifest = json.load(f)
    return [(blob(layer["digest"]), layer["mediaType"]) for layer in manifest["layers"]]


def process_cpu(pid):
    """CPU seconds (user + system, all threads) a running process used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    """CPU seconds (user + system) used by this script's finished children."""
    t = os.times()
    return t.children_user + t.children_system


def flatten(env, layout, tag, rootfs):
    """Unpacks the image's layers into `rootfs`, bottom first, applying OCI
    whiteouts (GNU tar keeps owners, modes, xattrs, devices, hardlinks)."""
    def blob(digest):
        return os.path.join(layout, "blobs", *digest.split(":"))
    index = json.load(open(os.path.join(layout, "index.json")))
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    manifest = json.load(open(blob(desc["digest"])))
    os.makedirs(rootfs)
    for layer in manifest["layers"]:
        media = layer["mediaType"]
        decompress = ["gzip", "-dc"] if media.endswith("gzip") else ["zstd", "-dc"] if media.endswith("zstd") else ["cat"]
        listing = subprocess.run(decompress + [blob(layer["digest"])], check=True, stdout=subprocess.PIPE)
        names = subprocess.run(["tar", "-t"], input=listing.stdout, check=True, stdout=subprocess.PIPE).stdout
        for name in names.decode("utf-8", "surrogateescape").splitlines():
            name = name.lstrip("./") if name.startswith("./") else name
            parent, base = os.path.split(name.rstrip("/"))
            if base == ".wh..wh..opq":
                d = os.path.join(rootfs, parent)
                for child in os.listdir(d) if os.path.isdir(d) else []:
                    p = os.path.join(d, child)
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
            elif base.startswith(".wh."):
                p = os.path.join(rootfs, parent, base[len(".wh."):])
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                elif os.path.lexists(p):
                    os.unlink(p)
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xp", "-C", rootfs,
                        "--exclude=.wh.*", "--exclude=*/.wh.*"],
                       input=listing.stdout, check=True, stderr=env.log)


def in_chroot(env, lower, tag, command):
    """Runs `command` in a chroot on an overlay over `lower` (as a container
    sees its rootfs), with /proc and /dev; undoes the mounts."""
    upper, work, root = (os.path.join(env.work, f"{tag}-{n}") for n in ("upper", "work", "root"))
    for d in (upper, work, root):
        os.makedirs(d, exist_ok=True)
    env.run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", root)
    try:
        for d in ("proc", "dev"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        env.run("mount", "-t", "proc", "proc", os.path.join(root, "proc"))
        env.run("mount", "--bind", "/dev", os.path.join(root, "dev"))
        env.run("chroot", root, *command)
    finally:
        for d in ("dev", "proc"):
            subprocess.run(["umount", os.path.join(root, d)], stderr=env.log)
        env.run("umount", root)
        shutil.rmtree(upper, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def loci_mount(env, image, tag, record=None, http1=False):
    """`loci mount` of the converted image, fresh cache (HTTP/1.1 only with
    `http1`); returns (process, dir)."""
    mnt = os.path.join(env.work, f"{tag}-mnt")
    os.makedirs(mnt, exist_ok=True)
    cache = os.path.join(env.work, f"{tag}-cache")
    shutil.rmtree(cache, ignore_errors=True)
    cfg = os.path.join(env.work, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(f'[cache]\ndir = "{cache}"\n')
        if env.fetch_config:
            f.write(f"[fetch]\n{env.fetch_config}\n")
        if http1:
            f.write("[registry]\nhttp2 = false\n")
    extra = ["--record-trace", record, "--publish-trace"] if record else []
    p = subprocess.Popen([env.loci, "--log", "warn", "mount", *env.registry_flags(), "--config", cfg, "--no-prefetch",
                          *extra, image.converted, mnt], stdout=env.log, stderr=env.log)
    wait_for(lambda: os.path.ismount(mnt) or p.poll() is not None, "loci mount", interval=0.005)
    if p.poll() is not None:
        raise RuntimeError(f"loci mount exited ({p.returncode}); see {env.work}/log")
    return p, mnt


def stop(p, mnt):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", mnt])


def record_trace(env, image):
    """Runs the start command once through `loci trace record` (containerd
    over a lazy root), publishing its trace; then converts the trace-ordered
    image with its own trace. Returns the number of chunk reads recorded."""
    trace = os.path.join(env.work, f"trace-{image.name}.json")
    publish_cfg = os.path.join(env.work, "publish.toml")
    with open(publish_cfg, "w") as f:
        f.write("[prefetch]\n" + (f"pack_level = {env.args.pack_level}\n" if env.args.pack_level is not None else ""))
    env.run(env.loci, "--log", "warn", "trace", "record", *env.registry_flags(), "--config", publish_cfg,
            "--address", env.sock, "--namespace", f"rec-{image.name}", "--out", trace, image.converted,
            "--", *image.command)
    t0, c0 = time.perf_counter(), children_cpu()
    env.run(env.loci, "--log", "warn", "convert", *env.registry_flags(), *env.convert_args, "--sign-key",
            env.signing_key(), "--config", publish_cfg, "--trace-of", image.converted, image.original, image.ordered)
    image.ordered_convert_s, image.ordered_convert_cpu_s = time.perf_counter() - t0, children_cpu() - c0
    for ref in (image.converted, image.ordered):
        out = subprocess.run([env.loci, "--log", "warn", "trace", "show", "--opened", *env.registry_flags(), ref],
                             check=True, stdout=subprocess.PIPE, stderr=env.log).stdout
        image.opened[ref] = json.loads(out)
    return len(json.load(open(trace))["accesses"])


def timed_containerd(env, image, mode, ns, run_index):
    ref = {"overlayfs": image.original, "loci-ordered": image.ordered}.get(mode, image.converted)
    drop_caches()
    since = env.registry_log_size()
    env.cpu_begin()
    t0 = time.perf_counter()
    if mode == "overlayfs":
        env.ctr(ns, "images", "pull", *env.registry_flags(), ref)
    else:
        env.run(env.loci, "--log", "warn", "pull", *env.registry_flags(), "--address", env.sock, "--namespace", ns, ref)
    t1 = time.perf_counter()
    snap = [] if mode == "overlayfs" else ["--snapshotter", "loci"]
    env.ctr(ns, "run", "--rm", *snap, ref, f"start-{run_index}", *image.command)
    t2 = time.perf_counter()
    env.cpu_end()
    fetched = env.registry_bytes(since)
    env.ctr(ns, "images", "rm", "--sync", ref)
    return t1 - t0, t2 - t1, fetched


def timed_native(env, image, ns, run_index):
    """loci-native: (0, start_s, bytes) of a start once the image's layers
    are complete (see the module doc)."""
    ref = image.converted
    env.run(env.loci, "--log", "warn", "pull", *env.registry_flags(), "--address", env.sock, "--namespace", ns, ref)
    env.ctr(ns, "run", "--rm", "--snapshotter", "loci", ref, f"first-{run_index}", *image.command)

    def complete():
        with open(env.snapshotter.log_path) as f:
            text = f.read()
        mounted = text.count("layer mounted lazily")
        laid_out = (text.count("layer laid out as a plain lower directory")
                    + text.count("laying the layer out as a plain directory failed"))
        return mounted > 0 and laid_out >= mounted
    wait_for(complete, "the layers' completion", timeout=900)
    drop_caches()
    since = env.registry_log_size()
    env.cpu_begin()
    t1 = time.perf_counter()
    env.ctr(ns, "run", "--rm", "--snapshotter", "loci", ref, f"start-{run_index}", *image.command)
    t2 = time.perf_counter()
    env.cpu_end()
    fetched = env.registry_bytes(since)
    env.ctr(ns, "images", "rm", "--sync", ref)
    return 0.0, t2 - t1, fetched


def timed_loci_fs(env, image, run_index, http1=False):
    drop_caches()
    since = env.registry_log_size()
    env.cpu_begin()
    t0 = time.perf_counter()
    p, mnt = loci_mount(env, image, f"lfs-{image.name}-{run_index}", http1=http1)
    t1 = time.perf_counter()
    try:
        in_chroot(env, mnt, f"lfs-{image.name}-{run_index}", image.command)
        t2 = time.perf_counter()
        env.cpu_end()
    finally:
        stop(p, mnt)
    return t1 - t0, t2 - t1, env.registry_bytes(since)


def timed_nydus_fs(env, image, run_index):
    tag = f"nfs-{image.name}-{run_index}"
    work = os.path.join(env.work, tag)
    mnt, cache = os.path.join(work, "mnt"), os.path.join(work, "cache")
    os.makedirs(mnt)
    os.makedirs(cache)
    cfg = os.path.join(work, "nydusd.json")
    host = env.addr
    with open(cfg, "w") as f:
        json.dump({"device": {"backend": {"type": "registry", "config": {
            "scheme": "http", "host": host, "repo": image.nydus["repo"], "timeout": 30,
            "connect_timeout": 5, "retry_limit": 2}},
            "cache": {"type": "blobcache", "config": {"work_dir": cache}}},
            "mode": "direct", "digest_validate": env.args.nydus_validate, "iostats_files": False,
            "enable_xattr": True, "fs_prefetch": {"enable": False}}, f)
    drop_caches()
    since = env.registry_log_size()
    env.cpu_begin()
    t0 = time.perf_counter()
    bootstrap = os.path.join(work, "bootstrap")
    env.fetch_blob(image.nydus["repo"], image.nydus["bootstrap"], bootstrap)
    p = subprocess.Popen([env.peers["nydus"]["nydusd"], "--config", cfg, "--mountpoint", mnt,
                          "--bootstrap", bootstrap, "--rlimit-nofile", "0", "--log-level", "warn"],
                         stdout=env.log, stderr=env.log)
    wait_for(lambda: os.path.ismount(mnt) or p.poll() is not None, "nydusd", interval=0.005)
    if p.poll() is not None:
        raise RuntimeError(f"nydusd exited ({p.returncode}); see {env.work}/log")
    t1 = time.perf_counter()
    try:
        in_chroot(env, mnt, tag, image.command)
        t2 = time.perf_counter()
        env.cpu_end()
    finally:
        subprocess.run(["umount", mnt], stderr=env.log)
        stop(p, mnt)
        shutil.rmtree(work, ignore_errors=True)
    return t1 - t0, t2 - t1, env.registry_bytes(since)


def measure(env, image, mode, run_index):
    """One cold start of `image` in `mode`: (pull_s, start_s, bytes)."""
    if mode in ("loci-trace", "loci-trace-layers", "loci-ordered") and not image.traced:
        accesses = record_trace(env, image)
        print(f"{image.name}: recorded and published a trace of {accesses} chunk reads", file=sys.stderr)
        image.traced = True
    if mode in ("loci", "loci-trace", "loci-trace-layers", "loci-ordered"):
        # Once a trace is published the snapshotter would replay it: the
        # no-trace mode turns replay off.
        env.stop_snapshotter()
        env.start_snapshotter(fresh_cache=True, prefetch=mode != "loci", packs=mode != "loci-trace-layers")
    elif mode == "loci-warm":
        env.stop_snapshotter()
        env.start_snapshotter(fresh_cache=False)
    elif mode == "loci-native":
        env.stop_snapshotter()
        env.start_snapshotter(fresh_cache=True, completion=True)
        return timed_native(env, image, f"{image.name}-{mode}-{run_index}", run_index)
    if mode == "loci-fs":
        return timed_loci_fs(env, image, run_index)
    if mode == "loci-fs-http1":
        return timed_loci_fs(env, image, run_index, http1=True)
    if mode == "nydus-fs":
        return timed_nydus_fs(env, image, run_index)
    return timed_containerd(env, image, mode, f"{image.name}-{mode}-{run_index}", run_index)


def summarize(rows, images, modes, link, opened):
    """Medians per image and mode, with ratios to overlayfs, to the warm
    start and (for modes with a trace) to the opened files' compressed
    size. `opened`: image -> mode -> that size in bytes."""
    summary = []
    for name in images:
        def median_total(mode):
            totals = [r["total_s"] for r in rows if r["image"] == name and r["mode"] == mode]
            return statistics.median(totals) if totals else None
        base, warm = median_total("overlayfs"), median_total("loci-warm")
        for mode in modes:
            rs = [r for r in rows if r["image"] == name and r["mode"] == mode]
            if not rs:
                continue
            med = {k: statistics.median(r[k] for r in rs)
                   for k in ("pull_s", "start_s", "total_s", "bytes_fetched", "node_cpu_s", "registry_cpu_s")}
            least = opened.get(name, {}).get(mode)
            summary.append({"image": name, "mode": mode, **med,
                            "ratio_to_overlayfs": med["total_s"] / base if base else None,
                            "ratio_to_warm": med["total_s"] / warm if warm else None,
                            "opened_compressed_bytes": least,
                            "fetched_to_opened": med["bytes_fetched"] / least if least else None,
                            "runs": len(rs),
                            "total_min_s": min(r["total_s"] for r in rs),
                            "total_max_s": max(r["total_s"] for r in rs),
                            "link": link})
    return summary


def print_table(summary, out=sys.stdout):
    print(f"{'image':8} {'mode':13} {'pull s':>8} {'start s':>8} {'total s':>8} {'spread s':>9} "
          f"{'MB fetched':>11} {'x overlayfs':>12} {'x warm':>7} {'x opened':>9} {'CPU s':>6} {'registry':>8}",
          file=out)

    def ratio(value, width):
        return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"
    for s in summary:
        spread = s["total_max_s"] - s["total_min_s"]
        print(f"{s['image']:8} {s['mode']:13} {s['pull_s']:8.2f} {s['start_s']:8.2f} {s['total_s']:8.2f} "
              f"{spread:9.2f} {s['bytes_fetched'] / 1e6:11.1f} {ratio(s['ratio_to_overlayfs'], 12)} "
              f"{ratio(s['ratio_to_warm'], 7)} {ratio(s['fetched_to_opened'], 9)} "
              f"{s['node_cpu_s']:6.2f} {s['registry_cpu_s']:8.2f}", file=out)


def plot(summary, images, modes, link, path):
    """A PNG of grouped bars: total time (pull part hatched) per image and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(images), figsize=(max(4.2 * len(images), 7), 4.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, name in zip(axes[0], images):
        rows = {s["mode"]: s for s in summary if s["image"] == name}
        shown = [m for m in modes if m in rows]
        for i, mode in enumerate(shown):
            s = rows[mode]
            ax.bar(i, s["pull_s"], color=colors[i % 10], hatch="//", edgecolor="white")
            ax.bar(i, s["start_s"], bottom=s["pull_s"], color=colors[i % 10])
            ax.errorbar(i, s["total_s"], yerr=[[s["total_s"] - s["total_min_s"]], [s["total_max_s"] - s["total_s"]]],
                        color="black", capsize=3)
            label = f"{s['total_s']:.1f}s"
            if s["ratio_to_overlayfs"] is not None and mode != "overlayfs":
                label += f"\n{s['ratio_to_overlayfs']:.2f}x"
            ax.text(i, s["total_max_s"], label, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(shown, rotation=35, ha="right", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("seconds to the command's exit (hatched: pull)")
        ax.margins(y=0.2)
    fig.suptitle(f"cold start, registry over {link}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"the small images ({','.join(QUICK_IMAGES)}), once")
    ap.add_argument("--images", help=f"comma-separated, of {','.join(IMAGES)} (default: python,nginx,jre,busybox)")
    ap.add_argument("--modes", help="comma-separated, of " + ",".join(ALL_MODES) + " (default: all but "
                    + ",".join(TLS_MODES) + ")")
    ap.add_argument("--runs", type=int, default=None, help="repetitions per image and mode (default 3, quick 1)")
    ap.add_argument("--loci", default=os.path.join(ROOT, "target/release/loci"))
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    ap.add_argument("--link", help="RATE,RTT for a shaped link to the registry, e.g. 200mbit,10ms")
    ap.add_argument("--tls", action="store_true",
                    help="the registry serves TLS (a CA made for the run, given to every client): "
                         "HTTP/2 where loci offers it; mode loci-fs-http1 is loci-fs kept to HTTP/1.1")
    ap.add_argument("--convert-args", help="extra `loci convert` options, e.g. '--chunk-size-kib 1024'")
    ap.add_argument("--fetch-config", help="extra [fetch] TOML for the loci-fs mode, e.g. 'amplify_bytes = 4194304'")
    ap.add_argument("--pack-level", type=int, help="[prefetch] pack_level the traces are published with (default: loci's)")
    ap.add_argument("--prefetch-config", help="extra [prefetch] TOML for the snapshotter, e.g. 'max_request_bytes = 262144'")
    ap.add_argument("--nydus-validate", action="store_true",
                    help="Nydus verifies every chunk's digest, as loci does (RAFS v5: v6 cannot validate in nydusd 2.2)")
    args = ap.parse_args()
    images = (args.images or (",".join(QUICK_IMAGES) if args.quick else "python,nginx,jre,busybox")).split(",")
    for name in images:
        if name not in IMAGES:
            sys.exit(f"bench: unknown image {name!r} (known: {', '.join(IMAGES)})")
    runs = args.runs or (1 if args.quick else 3)
    if os.geteuid() != 0:
        sys.exit("bench: run as root (containerd, FUSE, mounts, drop_caches)")
    os.makedirs(args.out, exist_ok=True)
    env = Env(args)
    env.peers = find_peers()
    modes = [m for m in (args.modes or ",".join(m for m in ALL_MODES if m not in TLS_MODES)).split(",") if m]
    for m in modes:
        if m not in ALL_MODES:
            sys.exit(f"bench: unknown mode {m!r} (known: {', '.join(ALL_MODES)})")
    # Run in ALL_MODES' order whatever the order asked: loci-warm reuses
    # the cache of the loci or loci-trace run before it; after another mode
    # (loci-ordered's chunks are not the image's) it would not be warm.
    modes.sort(key=ALL_MODES.index)
    if "loci-warm" in modes and not {"loci", "loci-trace"} & set(modes):
        sys.exit("bench: loci-warm needs loci or loci-trace (it starts with that run's cache)")
    if "nydus-fs" in modes and not env.peers["nydus"]["found"]:
        modes.remove("nydus-fs")
    if args.tls and "nydus-fs" in modes:
        if args.modes and "nydus-fs" in args.modes.split(","):
            sys.exit("bench: --tls does not drive nydusd over TLS; leave nydus-fs out")
        modes.remove("nydus-fs")
    for m in TLS_MODES:
        if m in modes and not args.tls:
            sys.exit(f"bench: {m} compares HTTP/1.1 with HTTP/2, which only TLS negotiates: add --tls")
    for peer, found in env.peers.items():
        print(f"peer {peer}: " + (found.get("version", "found") if found["found"] else f"skipped: {found['why']}"),
              file=sys.stderr)
    rows = []
    images_done = {}
    started = time.time()
    failed = True
    try:
        env.start_registry()
        env.start_snapshotter(fresh_cache=True)
        env.start_containerd()
        for name in images:
            image = Image(env, name, modes, quick=args.quick)
            images_done[name] = image
            for run in range(runs):
                for mode in modes:
                    pull_s, start_s, fetched = measure(env, image, mode, run)
                    rows.append({"image": name, "mode": mode, "run": run, "pull_s": pull_s, "start_s": start_s,
                                 "total_s": pull_s + start_s, "bytes_fetched": fetched, **env.cpu_last})
                    print(f"{name:8} run {run} {mode:10} pull {pull_s:6.2f}s start {start_s:6.2f}s "
                          f"total {pull_s + start_s:6.2f}s fetched {fetched / 1e6:8.1f} MB "
                          f"CPU {env.cpu_last['node_cpu_s']:5.2f}s (registry {env.cpu_last['registry_cpu_s']:4.2f}s)",
                          file=sys.stderr)
        failed = False
    finally:
        env.close(failed)
    converts, opened = {}, {}
    for name, image in images_done.items():
        mb = image.tar_bytes / 1e6
        converts[name] = {"tar_mb": mb, "loci_s": image.convert_s, "loci_cpu_s": image.convert_cpu_s,
                          "loci_mb_per_cpu_s": mb / image.convert_cpu_s if image.convert_cpu_s else None}
        if hasattr(image, "nydus"):
            n = image.nydus
            # nydus-image reads an unpacked tree: from the same image (its
            # compressed layers, as loci reads them) the unpacking is part
            # of its conversion too.
            from_image = n["convert_cpu_s"] + n["unpack_cpu_s"]
            converts[name].update({"nydus_s": n["convert_s"], "nydus_cpu_s": n["convert_cpu_s"],
                                   "nydus_mb_per_cpu_s": mb / n["convert_cpu_s"] if n["convert_cpu_s"] else None,
                                   "nydus_unpack_cpu_s": n["unpack_cpu_s"],
                                   "nydus_from_image_mb_per_cpu_s": mb / from_image if from_image else None})
        sbs = getattr(image, "side_by_side", None)
        if sbs and "skipped" not in sbs and sbs["loci_cpu_s"] > 0 and sbs["nydus_cpu_s"] > 0:
            converts[name]["same_input"] = dict(sbs, loci_mb_per_cpu_s=mb / sbs["loci_cpu_s"],
                                                nydus_mb_per_cpu_s=mb / sbs["nydus_cpu_s"],
                                                loci_to_nydus=sbs["nydus_cpu_s"] / sbs["loci_cpu_s"])
        elif sbs:
            converts[name]["same_input"] = sbs
        if image.traced:
            converts[name]["loci_ordered_s"] = image.ordered_convert_s
            converts[name]["loci_ordered_cpu_s"] = image.ordered_convert_cpu_s
            least = {m: image.opened[image.converted]["compressed_bytes"]
                     for m in ("loci", "loci-trace", "loci-trace-layers", "loci-warm", "loci-native", "loci-fs",
                               "loci-fs-http1")}
            least["loci-ordered"] = image.opened[image.ordered]["compressed_bytes"]
            opened[name] = least
        c = converts[name]
        print(f"{name}: conversion {mb:.0f} MB of tar: loci {c['loci_cpu_s']:.1f} CPU-s "
              f"({c['loci_mb_per_cpu_s'] or 0:.0f} MB/CPU-s)" +
              (f", nydus-image {c['nydus_cpu_s']:.1f} CPU-s ({c['nydus_mb_per_cpu_s'] or 0:.0f} MB/CPU-s; "
               f"with unpacking the image for it, {c['nydus_unpack_cpu_s']:.1f} CPU-s more: "
               f"{c['nydus_from_image_mb_per_cpu_s'] or 0:.0f} MB/CPU-s)"
               if "nydus_cpu_s" in c else ""), file=sys.stderr)
        if "loci_to_nydus" in c.get("same_input", {}):
            same = c["same_input"]
            print(f"{name}: conversion of the same compressed layers, local, medians of "
                  f"{len(same['loci_runs'])}: loci {same['loci_cpu_s']:.2f} CPU-s "
                  f"({same['loci_mb_per_cpu_s']:.0f} MB/CPU-s), nydus-image targz-rafs "
                  f"{same['nydus_cpu_s']:.2f} CPU-s ({same['nydus_mb_per_cpu_s']:.0f} MB/CPU-s): "
                  f"loci {same['loci_to_nydus']:.2f}x nydus-image's speed", file=sys.stderr)
    summary = summarize(rows, images, modes, env.link_note, opened)
    print_table(summary)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, "bench-runs.json"), "w") as f:
        json.dump({"modes": modes, "images": images, "runs": runs, "link": env.link_note, "peers": env.peers,
                   "conversions": converts, "opened_compressed_bytes": opened,
                   "elapsed_s": time.time() - started, "rows": rows}, f, indent=2)
    plot(summary, images, modes, env.link_note, os.path.join(args.out, "bench.png"))
    print(f"wrote {args.out}/bench.json, bench-runs.json and bench.png", file=sys.stderr)


if __name__ == "__main__":
    main()
