#!/usr/bin/env python3
"""Read throughput through `loci mount`, against the same file on local disk.

Builds a fixture image with a ~1 GiB incompressible file, pushes it to a
private docker-registry on 127.0.0.1, converts it, then measures, each from
a dropped page cache:
  local   the file extracted to local disk (the baseline)
  cold    through a fresh `loci mount` with an empty chunk cache
  warm    through a fresh `loci mount` whose chunk cache holds the file
  native  through the loci snapshotter once the layer is complete: a
          containerd view of the image made after its layers were laid out
          as plain directories (overlayfs over them, no FUSE); measured
          interleaved with the local file again (local-beside-native), its
          ratios to those reads
for sequential reads (1 MiB blocks) and random reads (4 KiB at seeded random
offsets). Prints a table with ratios to the local baseline and writes JSON.

Usage: tools/bench-mount.py [--loci target/release/loci] [--mib 1024]
                            [--random-reads 2000] [--out bench-mount.json]
(as root: it drops the page cache, mounts, and runs containerd)
"""
import argparse, hashlib, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from harness import drop_caches, free_port, start_registry, tear_down, wait_for  # noqa: E402


def seq_read(path):
    t = time.perf_counter(); n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
    return n / (time.perf_counter() - t) / 1e6


def random_read(path, count, seed=1):
    size = os.path.getsize(path)
    rng = random.Random(seed)
    offsets = [rng.randrange(0, size - 4096) & ~4095 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    t = time.perf_counter()
    for off in offsets:
        os.pread(fd, 4096, off)
    took = time.perf_counter() - t
    os.close(fd)
    return count / took, took / count * 1e6


class Mount:
    def __init__(self, loci, ref, mnt, cache, log):
        self.mnt = mnt
        os.makedirs(mnt, exist_ok=True)
        cfg = mnt + ".toml"
        with open(cfg, "w") as f:
            f.write(f'[cache]\ndir = "{cache}"\nmemory_bytes = 268435456\ndisk_bytes = 8589934592\n')
        self.proc = subprocess.Popen([loci, "mount", "--plain-http", "--config", cfg, ref, mnt],
                                     stdout=log, stderr=log)
        deadline = time.time() + 60
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"loci mount failed; see {log.name}")
            time.sleep(0.05)

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Snapshotter:
    """containerd (its own config, root and socket) with the loci
    snapshotter beside it, completion on and eager, so a pulled image's
    layers are complete and written out soon after the pull."""

    def __init__(self, loci, work, addr, log):
        self.work, self.log = work, log
        self.procs = []
        sock = os.path.join(work, "loci.sock")
        cfg = os.path.join(work, "snapshotter.toml")
        with open(cfg, "w") as f:
            f.write(f'[cache]\ndir = "{work}/snap-cache"\nmemory_bytes = 268435456\ndisk_bytes = 8589934592\n'
                    f'[completion]\nquiet_secs = 1\neager_images = ["{addr}/"]\n'
                    f'[snapshotter]\nplain_http_registries = ["{addr}"]\ntrust = "any"\n')
        self.snapshotter = self.spawn([loci, "snapshotter", "--address", sock, "--root",
                                       os.path.join(work, "snap-root"), "--config", cfg])
        wait_for(lambda: os.path.exists(sock), "loci snapshotter")
        d = os.path.join(work, "containerd")
        os.makedirs(d)
        with open(os.path.join(ROOT, "fixtures/containerd.toml")) as f:
            text = f.read().replace("@DIR@", d).replace(
                "@PROXY_PLUGINS@", f'[proxy_plugins.loci]\n  type = "snapshot"\n  address = "{sock}"\n')
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(text)
        self.sock = os.path.join(d, "containerd.sock")
        self.spawn(["containerd", "--config", os.path.join(d, "config.toml")])
        wait_for(lambda: os.path.exists(self.sock), "containerd")

    def spawn(self, cmd):
        p = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        self.procs.append(p)
        return p

    def ctr(self, *args):
        return subprocess.run(["ctr", "--address", self.sock, "--namespace", "bench", *args],
                              check=True, capture_output=True, text=True).stdout

    def view(self, loci, ref, layout, target):
        """Pulls `ref` lazily, waits until every layer is complete and laid
        out as a plain directory, and mounts a view of the image at
        `target`."""
        subprocess.run([loci, "pull", "--plain-http", "--address", self.sock, "--namespace", "bench", ref],
                       check=True, stdout=self.log, stderr=self.log)
        index = json.load(open(os.path.join(layout, "index.json")))
        blob = lambda d: os.path.join(layout, "blobs/sha256", d.split(":")[1])
        manifest = json.load(open(blob(index["manifests"][0]["digest"])))
        diff_ids = json.load(open(blob(manifest["config"]["digest"])))["rootfs"]["diff_ids"]
        layers = len(diff_ids)
        log_path = self.log.name
        wait_for(lambda: open(log_path).read().count("layer laid out as a plain lower directory") >= layers,
                 "the layers' completion and layout", timeout=600)
        chain = diff_ids[0]
        for d in diff_ids[1:]:
            chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
        os.makedirs(target, exist_ok=True)
        script = self.ctr("snapshots", "--snapshotter", "loci", "view", "--target", target, "bench-view", chain)
        subprocess.run(["sh", "-c", script.strip()], check=True)

    def close(self):
        tear_down(self.work, self.procs)
        subprocess.run(["pkill", "-f", f"fd-holder --socket {self.work}"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loci", default=os.path.join(ROOT, "target/release/loci"))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--random-reads", type=int, default=2000)
    ap.add_argument("--out", default="bench-mount.json")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="loci-bench-mount-")
    log = open(os.path.join(work, "log"), "w")
    reg = None
    try:
        layout = os.path.join(work, "layout")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools/make-fixture-image.py"), layout,
                        "--tag", "v1", "--big-mib", str(args.mib + 8)], check=True, stdout=log)
        addr = f"127.0.0.1:{free_port()}"
        reg = start_registry(work, addr, os.path.join(work, "storage"),
                             lambda cmd: subprocess.Popen(cmd, stdout=log, stderr=log))
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:v1",
                        f"docker://{addr}/bench:v1"], check=True)
        ref = f"{addr}/bench:loci"
        subprocess.run([args.loci, "convert", "--plain-http", f"{addr}/bench:v1", ref], check=True, stdout=log, stderr=log)
        # Baseline: the file on local disk.
        local = os.path.join(work, "local")
        os.makedirs(local)
        index = json.load(open(os.path.join(layout, "index.json")))
        blob = lambda d: os.path.join(layout, "blobs/sha256", d.split(":")[1])
        manifest = json.load(open(blob(index["manifests"][0]["digest"])))
        subprocess.run(["tar", "-x", "-C", local, "-f", blob(manifest["layers"][-1]["digest"]), "big/huge.bin"], check=True)
        rows = {}
        dropped = drop_caches()
        path = os.path.join(local, "big/huge.bin")
        rows["local"] = {"seq_mb_s": seq_read(path)}
        drop_caches()
        iops, lat = random_read(path, args.random_reads)
        rows["local"].update(random_iops=iops, random_us=lat)

        cache = os.path.join(work, "cache")
        for mode in ["cold", "warm"]:
            if mode == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            drop_caches()
            m = Mount(args.loci, ref, os.path.join(work, f"mnt-{mode}-seq"), cache, log)
            rows[mode] = {"seq_mb_s": seq_read(os.path.join(m.mnt, "big/huge.bin"))}
            m.close()
            if mode == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            drop_caches()
            m = Mount(args.loci, ref, os.path.join(work, f"mnt-{mode}-rand"), cache, log)
            iops, lat = random_read(os.path.join(m.mnt, "big/huge.bin"), args.random_reads)
            rows[mode].update(random_iops=iops, random_us=lat)
            m.close()
            if mode == "cold":  # leave the whole file cached for the warm runs
                m = Mount(args.loci, ref, os.path.join(work, "mnt-fill"), cache, log)
                seq_read(os.path.join(m.mnt, "big/huge.bin"))
                m.close()
        snap_log = open(os.path.join(work, "snapshotter.log"), "w")
        snap = Snapshotter(args.loci, work, addr, snap_log)
        try:
            view = os.path.join(work, "view")
            snap.view(args.loci, ref, layout, view)
            # Interleaved with the local file again, so the disk's state
            # (writeback after the completion, its own variance) is the
            # same for both: native's ratios are to these local reads.
            path = os.path.join(view, "big/huge.bin")
            local_path = os.path.join(local, "big/huge.bin")
            rows["local-beside-native"] = {}
            for name, p in [("local-beside-native", local_path), ("native", path)]:
                drop_caches()
                rows.setdefault(name, {})["seq_mb_s"] = seq_read(p)
            for name, p in [("local-beside-native", local_path), ("native", path)]:
                drop_caches()
                iops, lat = random_read(p, args.random_reads)
                rows[name].update(random_iops=iops, random_us=lat)
        finally:
            snap.close()
            snap_log.close()
        for mode, r in rows.items():
            base = rows["local-beside-native" if mode == "native" else "local"]
            r["seq_ratio_to_local"] = r["seq_mb_s"] / base["seq_mb_s"]
            r["random_ratio_to_local"] = r["random_iops"] / base["random_iops"]
        print(f"file: {args.mib} MiB incompressible; registry on loopback; page cache dropped: {dropped}")
        print(f"{'mode':20} {'seq MB/s':>10} {'x local':>8} {'rand 4K IOPS':>13} {'us/read':>9} {'x local':>8}")
        for mode, r in rows.items():
            print(f"{mode:20} {r['seq_mb_s']:10.0f} {r['seq_ratio_to_local']:8.2f} {r['random_iops']:13.0f} "
                  f"{r['random_us']:9.0f} {r['random_ratio_to_local']:8.2f}")
        with open(args.out, "w") as f:
            json.dump({"mib": args.mib, "page_cache_dropped": dropped, "rows": rows}, f, indent=2)
    finally:
        if reg:
            reg.terminate()
        log.close()
        if os.environ.get("LOCI_BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
