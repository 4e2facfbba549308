#!/usr/bin/env python3
"""Cold start of a container through containerd: overlayfs full pull against
loci's lazy pull, in the same run, on the same machine.

Starts a private docker-registry (127.0.0.1), containerd (own root, state
and socket) and `loci snapshotter`, pushes an image, converts it, then for
each mode times the pull and the run of the image's start command to its
exit, from a clean state (images and snapshots removed, page cache
dropped):

  overlayfs   ctr images pull + ctr run             (containerd's default)
  loci        loci pull + ctr run --snapshotter loci, empty chunk cache
  loci-trace  the same with the image's start trace published (recorded by
              a first loci run through `loci mount --record-trace`)
  loci-warm   loci again with the chunk cache kept from the previous run

Bytes fetched are read from the registry's access log. Prints a table with
ratios to overlayfs and writes JSON rows (image, mode, pull_s, start_s,
total_s, bytes_fetched, ratio_to_overlayfs).

With --link RATE,RTT (e.g. 200mbit,10ms) the registry runs in a network
namespace this script creates, behind a veth pair shaped with tc netem
(half the round trip each way, the rate both ways), so the numbers reflect
a registry across a network; the namespace is removed afterwards, even on
failure.

Usage: sudo tools/cold-start.py [--image python|fixture] [--runs N]
         [--modes overlayfs,loci,loci-trace,loci-warm] [--link RATE,RTT] [--out FILE]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        pass


def wait_for(cond, what, timeout=60):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            sys.exit(f"{what} not ready after {timeout}s")
        time.sleep(0.05)


class Env:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="loci-cold-start-")
        self.log = open(os.path.join(self.work, "log"), "w")
        self.procs = []
        self.loci = args.loci

    def spawn(self, cmd, name):
        f = open(os.path.join(self.work, f"{name}-{len(self.procs)}.log"), "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=f)
        self.procs.append(p)
        return p

    def run(self, *cmd, **kw):
        return subprocess.run(list(cmd), check=True, stdin=subprocess.DEVNULL,
                              stdout=kw.get("stdout", self.log), stderr=self.log)

    def shaped_link(self, link):
        """A namespace for the registry behind a shaped veth pair; returns
        the address the registry listens on there."""
        rate, rtt = link.split(",")
        half = f"{float(re.match(r'[0-9.]+', rtt).group()) / 2}{re.sub(r'[0-9.]+', '', rtt) or 'ms'}"
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
        # has it, else tbf for the rate alone (and say so).
        self.link_note = f"{rate}, rtt {rtt}"
        for dev, prefix in ((host, []), (peer, ["ip", "netns", "exec", self.netns])):
            netem = prefix + ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", half, "rate", rate]
            if subprocess.run(netem, stdout=self.log, stderr=self.log).returncode != 0:
                self.run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                         "burst", "256kbit", "latency", "100ms")
                self.link_note = f"{rate}, rtt not shaped (no netem in this kernel)"
        print(f"registry behind a shaped link: {self.link_note}", file=sys.stderr)
        return f"{subnet}.2:5000"

    def start_registry(self):
        self.netns = None
        self.addr = self.shaped_link(self.args.link) if self.args.link else f"127.0.0.1:{free_port()}"
        with open(os.path.join(ROOT, "fixtures/registry.yml")) as f:
            cfg = f.read().replace("@ROOT@", os.path.join(self.work, "registry")).replace("@ADDR@", self.addr)
        path = os.path.join(self.work, "registry.yml")
        with open(path, "w") as f:
            f.write(cfg)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.registry = self.spawn(prefix + ["docker-registry", "serve", path], "registry")
        host, port = self.addr.split(":")
        wait_for(lambda: socket.socket().connect_ex((host, int(port))) == 0, "registry")

    def registry_bytes(self, since):
        """Bytes of blob GETs in the registry log after offset `since`."""
        text = open(os.path.join(self.work, "registry-0.log")).read()[since:]
        return sum(int(m.group(1)) for m in re.finditer(r'"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/1.1" 20[06] (\d+)', text))

    def registry_log_size(self):
        return os.path.getsize(os.path.join(self.work, "registry-0.log"))

    def start_snapshotter(self, fresh_cache, prefetch=True):
        cache = os.path.join(self.work, "loci-cache")
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        cfg = os.path.join(self.work, "snapshotter.toml")
        with open(cfg, "w") as f:
            f.write(f'[cache]\ndir = "{cache}"\nmemory_bytes = 268435456\ndisk_bytes = 21474836480\n'
                    f'[prefetch]\nenabled = {"true" if prefetch else "false"}\n'
                    f'[snapshotter]\nplain_http_registries = ["{self.addr}"]\n')
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

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if getattr(self, "netns", None):
            subprocess.run(["ip", "netns", "del", self.netns])  # removes the veth pair too
        for line in reversed(open("/proc/self/mounts").read().splitlines()):
            target = line.split(" ")[1]
            if target.startswith(self.work):
                subprocess.run(["umount", "-l", target])
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"kept {self.work}")


def prepare_image(env, kind):
    """Pushes the image; returns (original ref, converted ref)."""
    if kind == "python":
        cache = os.environ.get("LOCI_IMAGE_CACHE", "/var/tmp/loci-images")
        env.run(os.path.join(ROOT, "tools/make-debian-image.sh"), os.path.join(cache, "python"), "python")
        layout, tag = os.path.join(cache, "python/layout"), "python"
    else:
        layout, tag = os.path.join(env.work, "fixture"), "fixture"
        env.run(sys.executable, os.path.join(ROOT, "tools/make-fixture-image.py"), layout, "--tag", tag)
    original = f"{env.addr}/{kind}:v1"
    converted = f"{env.addr}/{kind}:loci"
    env.run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{original}")
    env.run(env.loci, "--log", "warn", "convert", "--plain-http", original, converted)
    return original, converted


def record_trace(env, converted):
    """Runs the start command once over `loci mount` (chroot on an overlay of
    the mount, as a container sees it) recording and publishing its trace."""
    mnt, upper, work, root = (os.path.join(env.work, n) for n in ("rec-mnt", "rec-upper", "rec-work", "rec-root"))
    for d in (mnt, upper, work, root):
        os.makedirs(d, exist_ok=True)
    cfg = os.path.join(env.work, "rec.toml")
    with open(cfg, "w") as f:
        f.write(f'[cache]\ndir = "{os.path.join(env.work, "rec-cache")}"\n')
    trace = os.path.join(env.work, "trace.json")
    p = subprocess.Popen([env.loci, "mount", "--plain-http", "--config", cfg, "--no-prefetch",
                          "--record-trace", trace, "--publish-trace", converted, mnt], stdout=env.log, stderr=env.log)
    wait_for(lambda: os.path.ismount(mnt), "loci mount")
    env.run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={mnt},upperdir={upper},workdir={work}", root)
    for d in ("proc", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    env.run("mount", "-t", "proc", "proc", os.path.join(root, "proc"))
    env.run("mount", "--bind", "/dev", os.path.join(root, "dev"))
    cmd = image_command(env, converted)
    env.run("chroot", root, *cmd)
    for d in ("dev", "proc", ""):
        env.run("umount", os.path.join(root, d) if d else root)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    return len(json.load(open(trace))["accesses"])


# The fixture's own command is an interactive shell: give it work to do.
FIXTURE_COMMAND = ["/bin/sh", "-c", "cat /etc/hello.txt; sha256sum /data/big-random.bin /bin/busybox"]


def image_command(env, ref):
    """The image's entrypoint + cmd, read from its config through skopeo."""
    if "/fixture:" in ref:
        return FIXTURE_COMMAND
    out = subprocess.run(["skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{ref}"],
                         check=True, stdout=subprocess.PIPE, stderr=env.log).stdout
    config = json.loads(out).get("config", {})
    return (config.get("Entrypoint") or []) + (config.get("Cmd") or [])


def timed_start(env, mode, ns, ref, run_index):
    command = image_command(env, ref)
    drop_caches()
    since = env.registry_log_size()
    t0 = time.perf_counter()
    if mode == "overlayfs":
        env.ctr(ns, "images", "pull", "--plain-http", ref)
    else:
        env.run(env.loci, "--log", "warn", "pull", "--plain-http", "--address", env.sock, "--namespace", ns, ref)
    t1 = time.perf_counter()
    snap = [] if mode == "overlayfs" else ["--snapshotter", "loci"]
    env.ctr(ns, "run", "--rm", *snap, ref, f"start-{run_index}", *command)
    t2 = time.perf_counter()
    fetched = env.registry_bytes(since)
    env.ctr(ns, "images", "rm", "--sync", ref)
    return {"mode": mode, "pull_s": t1 - t0, "start_s": t2 - t1, "total_s": t2 - t0, "bytes_fetched": fetched}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="python", choices=["python", "fixture"])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--modes", default="overlayfs,loci,loci-trace,loci-warm")
    ap.add_argument("--loci", default=os.path.join(ROOT, "target/release/loci"))
    ap.add_argument("--out", default="cold-start.json")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--link", help="RATE,RTT for a shaped link to the registry, e.g. 200mbit,10ms")
    args = ap.parse_args()
    modes = args.modes.split(",")
    env = Env(args)
    rows = []
    try:
        env.start_registry()
        original, converted = prepare_image(env, args.image)
        env.start_snapshotter(fresh_cache=True)
        env.start_containerd()
        traced = False
        for run in range(args.runs):
            for mode in modes:
                if mode == "loci-trace" and not traced:
                    accesses = record_trace(env, converted)
                    print(f"recorded and published a trace of {accesses} chunk reads", file=sys.stderr)
                    traced = True
                if mode in ("loci", "loci-trace"):
                    # Once a trace is published the snapshotter would replay
                    # it: the no-trace mode turns replay off.
                    env.stop_snapshotter()
                    env.start_snapshotter(fresh_cache=True, prefetch=mode == "loci-trace")
                elif mode == "loci-warm":
                    env.stop_snapshotter()
                    env.start_snapshotter(fresh_cache=False)
                ref = original if mode == "overlayfs" else converted
                row = timed_start(env, mode, f"{mode}-{run}", ref, run)
                row["image"] = args.image
                rows.append(row)
                print(f"run {run} {mode:10} pull {row['pull_s']:6.2f}s start {row['start_s']:6.2f}s "
                      f"total {row['total_s']:6.2f}s fetched {row['bytes_fetched'] / 1e6:8.1f} MB", file=sys.stderr)
    finally:
        env.close()
    summary = []
    base = statistics.median(r["total_s"] for r in rows if r["mode"] == "overlayfs") if "overlayfs" in modes else None
    print(f"{'mode':10} {'pull s':>8} {'start s':>8} {'total s':>8} {'MB fetched':>11} {'x overlayfs':>12}")
    for mode in modes:
        rs = [r for r in rows if r["mode"] == mode]
        med = {k: statistics.median(r[k] for r in rs) for k in ("pull_s", "start_s", "total_s", "bytes_fetched")}
        med["ratio_to_overlayfs"] = med["total_s"] / base if base else None
        spread = max(r["total_s"] for r in rs) - min(r["total_s"] for r in rs)
        summary.append({"image": args.image, "mode": mode, **med, "runs": len(rs), "total_spread_s": spread,
                        "link": getattr(env, "link_note", "loopback")})
        ratio = f"{med['ratio_to_overlayfs']:12.2f}" if base else f"{'-':>12}"
        print(f"{mode:10} {med['pull_s']:8.2f} {med['start_s']:8.2f} {med['total_s']:8.2f} "
              f"{med['bytes_fetched'] / 1e6:11.1f} {ratio}")
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
