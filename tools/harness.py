"""What the tools share: a free port, dropping the page cache, waiting for a
daemon to come up, and the private docker-registry they start (its config
from fixtures/registry.yml, the same the Rust tests use)."""
import hashlib, os, signal, socket, subprocess, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def drop_caches():
    """Drops the page cache (root only); says whether it could."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def wait_for(cond, what, timeout=60, interval=0.05):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s")
        time.sleep(interval)


def tear_down(work, procs):
    """Unmounts everything mounted under `work` (deepest first), then stops
    `procs` (last started first): SIGTERM, SIGKILL after 30 s."""
    for line in reversed(open("/proc/self/mounts").read().splitlines()):
        target = line.split(" ")[1]
        if target.startswith(work):
            subprocess.run(["umount", "-l", target])
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def listening(addr):
    """Whether something accepts connections at HOST:PORT."""
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def registry_config(work, listen, storage, tls=None):
    """Writes a docker-registry config serving on `listen` with its storage
    under `storage` (over TLS with `tls`, a (certificate, key) pair of
    paths); returns its path."""
    with open(os.path.join(ROOT, "fixtures/registry.yml")) as f:
        cfg = f.read().replace("@ROOT@", storage).replace("@ADDR@", listen)
    if tls:
        cfg += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    path = os.path.join(work, "registry.yml")
    with open(path, "w") as f:
        f.write(cfg)
    return path


def start_registry(work, listen, storage, spawn, prefix=(), reach=None, tls=None):
    """Starts docker-registry on `listen` (inside a namespace when `prefix`
    is `ip netns exec NS`; over TLS with `tls`, see `registry_config`),
    through `spawn(cmd)`, and waits until `reach` (the address clients
    use; `listen` by default) accepts connections. Returns what `spawn`
    returned."""
    path = registry_config(work, listen, storage, tls)
    proc = spawn(list(prefix) + ["docker-registry", "serve", path])
    wait_for(lambda: listening(reach or listen), "registry")
    return proc


def push_blob(addr, repo, data):
    """Uploads `data` as a blob of `repo` to the plain-HTTP registry at
    `addr` (a monolithic upload); returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = urllib.request.urlopen(urllib.request.Request(
        f"http://{addr}/v2/{repo}/blobs/uploads/", method="POST"))
    loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = f"http://{addr}{loc}"
    sep = "&" if "?" in loc else "?"
    urllib.request.urlopen(urllib.request.Request(
        f"{loc}{sep}digest={digest}", data=data, method="PUT",
        headers={"Content-Type": "application/octet-stream"}))
    return digest
