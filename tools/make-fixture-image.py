#!/usr/bin/env python3
"""Builds loci's multi-layer test image as an OCI image layout.

Everything is generated here (busybox-static is the only file taken from the
system), deterministically: the same run gives the same digests. The layers
cover what a layer format must carry: nested directories, empty and
multi-MiB files, relative/absolute/dangling symlinks, hardlinks, xattrs, a
fifo, a device node, setuid/setgid/sticky bits, long and non-UTF-8 names,
and, in an upper layer, a deleted file and an opaque directory (whiteouts).
Layer 1 is gzip, layer 2 plain tar, layer 3 zstd: every input loci reads.

Usage: make-fixture-image.py OUT_DIR [--tag TAG] [--big-mib N] [--variant V]
                              [--busybox CMD]
  --big-mib N   add a layer with N MiB of incompressible files (laziness tests)
  --variant V   a second image sharing all but a few files with the first
  --busybox CMD instead, a one-layer plain-shell image (busybox-static with
                all its applets) whose command is `sh -c CMD` (benchmarks)
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile

MTIME = 1700000000


def info(name, kind=tarfile.REGTYPE, mode=0o644, size=0, uid=0, gid=0, **kw):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = kw.pop("mtime", MTIME)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT,
                                encoding="utf-8", errors="surrogateescape")

    def dir(self, name, mode=0o755, **kw):
        self.tar.addfile(info(name, tarfile.DIRTYPE, mode, **kw))

    def file(self, name, data, mode=0o644, **kw):
        self.tar.addfile(info(name, size=len(data), mode=mode, **kw), io.BytesIO(data))

    def symlink(self, name, target):
        self.tar.addfile(info(name, tarfile.SYMTYPE, 0o777, linkname=target))

    def hardlink(self, name, target):
        self.tar.addfile(info(name, tarfile.LNKTYPE, 0o644, linkname=target))

    def special(self, name, kind, mode, major=0, minor=0):
        self.tar.addfile(info(name, kind, mode, devmajor=major, devminor=minor))

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def busybox_layer(all_applets=False):
    layer = Layer()
    for d in ["bin", "etc", "usr", "usr/bin", "var"]:
        layer.dir(d)
    layer.dir("tmp", 0o1777)
    layer.dir("root", 0o700)
    with open("/bin/busybox", "rb") as f:
        layer.file("bin/busybox", f.read(), 0o755)
    applets = ["sh", "ls", "cat", "sha256sum", "find", "stat", "echo", "wc", "head", "readlink", "sleep", "true"]
    if all_applets:
        listed = subprocess.run(["/bin/busybox", "--list"], stdout=subprocess.PIPE, check=True).stdout.decode()
        applets = sorted(set(listed.split()) - {"busybox"})
    for applet in applets:
        layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    layer.file("etc/group", b"root:x:0:\nuser:x:1000:\n")
    layer.file("etc/hello.txt", b"hello from loci\n")
    return layer.bytes()


def edge_case_layer(variant):
    rng = random.Random(42)
    layer = Layer()
    layer.dir("data")
    for i, _ in enumerate("nested/a/b/c/d/e".split("/")):
        layer.dir("data/" + "/".join("nested/a/b/c/d/e".split("/")[: i + 1]))
    layer.file("data/nested/a/b/c/d/e/deep.txt", b"deep\n")
    layer.file("data/empty", b"")
    layer.file("data/big-random.bin", rng.randbytes(5 << 20))
    text = b"".join(b"line %d of a compressible text file\n" % i for i in range(90000))
    layer.file("data/big-text.txt", text)
    layer.symlink("data/rel-link", "nested/a/b/c/d/e/deep.txt")
    layer.symlink("data/abs-link", "/etc/hello.txt")
    layer.symlink("data/dangling", "does-not-exist")
    layer.file("data/hardlink-target.txt", b"shared inode\n")
    layer.hardlink("data/hardlink", "data/hardlink-target.txt")
    ti = info("data/xattr.txt", size=6)
    ti.pax_headers = {"SCHILY.xattr.user.loci.test": "fixture value",
                      "SCHILY.xattr.user.loci.other": "second"}
    layer.tar.addfile(ti, io.BytesIO(b"xattr\n"))
    layer.special("data/fifo", tarfile.FIFOTYPE, 0o644)
    layer.special("data/null", tarfile.CHRTYPE, 0o666, 1, 3)
    layer.file("data/setuid", b"#!/bin/sh\necho setuid\n", 0o4755)
    layer.dir("data/setgid-dir", 0o2775)
    layer.dir("data/sticky-dir", 0o1777)
    layer.file("data/owned", b"owned by user\n", 0o600, uid=1000, gid=1000)
    layer.file("data/" + "l" * 200, b"long name\n")
    longdir = "data/" + "/".join(["directory-with-a-long-name-%02d" % i for i in range(6)])
    for i in range(6):
        layer.dir("data/" + "/".join(["directory-with-a-long-name-%02d" % j for j in range(i + 1)]))
    layer.file(longdir + "/file-in-a-long-path.txt", b"long path\n")
    layer.file("data/caf\udce9-latin1.txt", b"non-utf8 name\n")
    layer.file("data/to-delete.txt", b"deleted in layer 3\n")
    layer.dir("data/opaque-dir")
    layer.file("data/opaque-dir/old1", b"hidden by opaque\n")
    layer.file("data/opaque-dir/old2", b"hidden by opaque\n")
    layer.file("data/variant.txt", ("variant %s\n" % variant).encode())
    layer.dir("data/many")
    for i in range(50):
        layer.file("data/many/file-%03d.txt" % i, (b"small file %d\n" % i) * (i + 1))
    return layer.bytes()


def upper_layer():
    layer = Layer()
    layer.dir("data")
    layer.file("data/.wh.to-delete.txt", b"")
    layer.dir("data/opaque-dir")
    layer.file("data/opaque-dir/.wh..wh..opq", b"")
    layer.file("data/opaque-dir/new.txt", b"only file after the opaque marker\n")
    layer.dir("etc")
    layer.file("etc/hello.txt", b"hello again from layer 3\n")
    layer.file("data/added-in-3.txt", b"added\n")
    return layer.bytes()


def big_layer(mib):
    """Incompressible files, one big and many small, for laziness tests."""
    rng = random.Random(7)
    layer = Layer()
    layer.dir("big")
    layer.file("big/small.txt", b"a small file in a big layer\n")
    size = (mib - 8) << 20
    piece = 64 << 20  # randbytes cannot make a GiB at once
    layer.file("big/huge.bin", b"".join(rng.randbytes(min(piece, size - at)) for at in range(0, size, piece)))
    layer.dir("big/files")
    for i in range(64):
        layer.file("big/files/f%02d.bin" % i, rng.randbytes(128 << 10))
    return layer.bytes()


def zstd_compress(data):
    return subprocess.run(["zstd", "-q", "-3", "-c", "--no-check"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout


class Layout:
    def __init__(self, out):
        self.out = out
        os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)

    def blob(self, data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.out, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return "sha256:" + digest

    def finish(self, tag, manifest_digest, size):
        with open(os.path.join(self.out, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        index_path = os.path.join(self.out, "index.json")
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
        if os.path.exists(index_path):
            with open(index_path) as f:
                index = json.load(f)
        ref = "org.opencontainers.image.ref.name"
        index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(ref) != tag]
        index["manifests"].append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": size, "annotations": {ref: tag}})
        with open(index_path, "w") as f:
            json.dump(index, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tag", default="fixture")
    ap.add_argument("--big-mib", type=int, default=0)
    ap.add_argument("--variant", default="one")
    ap.add_argument("--busybox", metavar="CMD")
    args = ap.parse_args()

    tars = [busybox_layer(), edge_case_layer(args.variant), upper_layer()]
    kinds = ["gzip", "tar", "zstd"]
    cmd = ["/bin/sh"]
    if args.busybox:
        tars, kinds, cmd = [busybox_layer(all_applets=True)], ["gzip"], ["/bin/sh", "-c", args.busybox]
    if args.big_mib:
        tars.append(big_layer(args.big_mib))
        kinds.append("tar")  # incompressible anyway; gzip would only cost time
    layout = Layout(args.out)
    layers = []
    for data, kind in zip(tars, kinds):
        if kind == "gzip":
            blob = gzip.compress(data, compresslevel=6, mtime=0)
            media = "application/vnd.oci.image.layer.v1.tar+gzip"
        elif kind == "zstd":
            blob = zstd_compress(data)
            media = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            blob = data
            media = "application/vnd.oci.image.layer.v1.tar"
        layers.append({"mediaType": media, "digest": layout.blob(blob), "size": len(blob)})
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "loci fixture layer %d" % i}
                    for i in range(len(tars))],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": layout.blob(config_bytes), "size": len(config_bytes)},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    layout.finish(args.tag, layout.blob(manifest_bytes), len(manifest_bytes))
    for t, l in zip(tars, layers):
        print(l["digest"], l["mediaType"], len(t))


if __name__ == "__main__":
    main()
