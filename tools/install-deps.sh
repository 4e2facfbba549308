#!/usr/bin/env bash
# Installs the Debian packages loci builds against and tests with: the real
# registry, containerd + runc, FUSE, image tools, and the C libraries and
# code generators the Rust dependencies need; for the benchmark, cmake (to
# build Nydus, see install-peers.sh), matplotlib and stargz's ctr-remote.
# Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  build-essential pkg-config clang libclang-dev librocksdb-dev protobuf-compiler \
  docker-registry containerd runc skopeo umoci busybox-static fuse3 \
  zstd attr python3 ca-certificates iproute2 debootstrap curl \
  golang-go golang-github-containerd-containerd-dev \
  cmake python3-matplotlib fonts-dejavu-core stargz-snapshotter
