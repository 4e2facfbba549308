#!/usr/bin/env python3
"""Writes the seed corpora of loci's fuzz targets (fuzz/corpus/<target>/)
from a small layer this script builds and `loci convert` converts, so the
fuzzers start from real inputs: a real blob, its TOC, manifests, a trace.

usage: tools/fuzz/make-seeds.py LOCI_BINARY
"""
import gzip, hashlib, io, json, os, random, struct, subprocess, sys, tarfile, tempfile

loci = sys.argv[1]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fuzz", "corpus")


def seed(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def layer_tar():
    rng = random.Random(7)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data, mode in [("etc/hello", b"hello\n", 0o644), ("bin/tool", rng.randbytes(40000), 0o4755),
                                 ("data/big", rng.randbytes(300000), 0o644), ("data/empty", b"", 0o600)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            if name == "etc/hello":
                info.pax_headers = {"SCHILY.xattr.user.note": "x"}
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("etc/link")
        link.type, link.linkname = tarfile.SYMTYPE, "hello"
        t.addfile(link)
        hard = tarfile.TarInfo("data/hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, "data/big"
        t.addfile(hard)
    return buf.getvalue()


def blob(layout, digest, data):
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":")[1]), "wb") as f:
        f.write(data)


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


tar = layer_tar()
seed("convert", "plain-tar", b"\x00" + tar)
seed("convert", "gzip-tar", b"\x01" + gzip.compress(tar, mtime=0))
seed("convert", "zstd-tar", b"\x02" + subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout)
seed("convert", "empty-tar", b"\x00" + b"\x00" * 1024)

with tempfile.TemporaryDirectory() as work:
    src, dst = os.path.join(work, "src"), os.path.join(work, "dst")
    gz = gzip.compress(tar, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(tar)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(gz), "size": len(gz)}]}).encode()
    for data in (gz, config, manifest):
        blob(src, sha(data), data)
    with open(os.path.join(src, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(src, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
                   "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    subprocess.run([loci, "--log", "warn", "convert", "--chunk-size-kib", "64", f"oci:{src}:v1", f"oci:{dst}:loci"], check=True)
    index = json.load(open(os.path.join(dst, "index.json")))
    read = lambda d: open(os.path.join(dst, "blobs", "sha256", d.split(":")[1]), "rb").read()
    converted_manifest = read(index["manifests"][0]["digest"])
    m = json.loads(converted_manifest)
    converted_config = read(m["config"]["digest"])
    layer_blob = read(m["layers"][0]["digest"])
    seed("footer", "converted-blob", layer_blob)
    _, _, _, _, _, toc_offset, toc_length, toc_len = struct.unpack("<II8sIIQQQ", layer_blob[-48:])
    frame = layer_blob[toc_offset:toc_offset + toc_length]
    wire = subprocess.run(["zstd", "-q", "-d", "-c"], input=frame[8:], capture_output=True, check=True).stdout
    assert len(wire) == toc_len
    seed("toc", "converted-toc", wire)
    seed("manifest", "manifest", converted_manifest)
    seed("manifest", "manifest-and-config", converted_manifest + b"\x00" + converted_config)
    index_doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(converted_manifest),
                                "size": len(converted_manifest), "platform": {"os": "linux", "architecture": "amd64"}}]}
    seed("manifest", "index", json.dumps(index_doc))
    ann = m["layers"][0]["annotations"]
    labels = [f"{k}={v}" for k, v in sorted(ann.items())]
    labels += ["containerd.io/snapshot.ref=" + json.loads(converted_config)["rootfs"]["diff_ids"][0],
               "containerd.io/snapshot/cri.image-ref=127.0.0.1:5000/app:loci",
               "containerd.io/snapshot/cri.layer-digest=" + m["layers"][0]["digest"], ""]
    seed("labels", "converted-layer", "\n".join(labels))
    trace = {"version": 1, "layers": [m["layers"][0]["digest"]],
             "accesses": [{"layer": 0, "chunk": 0, "digest": sha(b"x"), "at_ms": 3, "path": "bin/tool"}]}
    seed("trace", "trace", json.dumps(trace))

for i, header in enumerate([
    'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"',
    'Basic realm="registry"', 'Bearer realm=https://x/t,service=s', 'Bearer realm="unterminated', "Negotiate abc"]):
    seed("www_authenticate", f"header-{i}", header)
print("seeds written to", os.path.normpath(root))
