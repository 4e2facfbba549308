#!/usr/bin/env bash
# The main job, end to end on one machine: build loci, start a private
# docker-registry (127.0.0.1), containerd and the loci snapshotter (all in a
# temp dir), build a realistic image from Debian packages (python3 with
# numpy, pandas, scipy, matplotlib, sklearn: ~1.3 GB; cached under
# /var/tmp/loci-images), convert it, and start it cold both ways, printing
# the timing (tools/bench.py with the containerd modes):
#   overlayfs   ctr images pull + ctr run      (containerd's normal pull)
#   loci        loci pull + ctr run --snapshotter loci (lazy, empty cache)
#   loci-trace  the same with the image's start trace published
#   loci-warm   loci with the node's chunk cache warm
#   loci-ordered  the trace-ordered image (loci convert --trace-of) and its trace
# Run as root on Debian after tools/install-deps.sh. Extra arguments go to
# tools/bench.py, e.g. `tools/demo.sh --images fixture` (the small test
# image: seconds) or `--link 200mbit,10ms`.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "demo.sh: run as root (containerd, FUSE, mounts)" >&2; exit 1; }
cargo build --release --locked
exec /usr/bin/python3 tools/bench.py --loci target/release/loci --out demo-out \
  --images python --runs 1 --modes overlayfs,loci,loci-trace,loci-warm,loci-ordered "$@"
