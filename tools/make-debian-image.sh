#!/usr/bin/env bash
# Builds a realistic, large image from Debian packages for benchmarks:
# debootstrap (minbase) plus the packages given, turned into an OCI image
# layout with umoci, then optionally pushed to a registry with skopeo.
#
# Usage: tools/make-debian-image.sh OUT_DIR TAG [PACKAGES] [--push REF] [--cmd CMD] [--add DIR]
#                                   [--user USER] [--workdir DIR]
#   PACKAGES  comma-separated (default: a Python data-science set, ~1 GB)
#   --push    copy the image to docker://REF (plain HTTP allowed)
#   --cmd     the image's start command (default: a numpy/pandas import)
#   --add     copy DIR's contents into the image's root as well
#   --user    the image config's User (default: unset, root)
#   --workdir the image config's WorkingDir (default: unset, /)
# The rootfs is cached in OUT_DIR/rootfs-KEY.tar by package list, and the
# image in OUT_DIR/layout by everything that makes it, so a rerun with the
# same inputs is quick.
set -euo pipefail

out=${1:?usage: make-debian-image.sh OUT_DIR TAG [PACKAGES] [--push REF] [--cmd CMD] [--add DIR]}
tag=${2:?tag}
shift 2
packages="python3,python3-numpy,python3-pandas,python3-scipy,python3-matplotlib,python3-sklearn"
if [[ $# -gt 0 && $1 != --* ]]; then packages=$1; shift; fi
push=""
add=""
user=""
workdir=""
cmd="python3 -c 'import numpy, pandas, scipy.stats; print(numpy.arange(10).sum())'"
while [[ $# -gt 0 ]]; do
  case $1 in
    --push) push=$2; shift 2 ;;
    --cmd) cmd=$2; shift 2 ;;
    --add) add=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mirror=${LOCI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${LOCI_DEBIAN_SUITE:-bookworm}

mkdir -p "$out"
key=$(printf '%s %s %s' "$suite" "$mirror" "$packages" | sha256sum | cut -c1-16)
rootfs_tar="$out/rootfs-$key.tar"
if [[ ! -f $rootfs_tar ]]; then
  work=$(mktemp -d)
  trap 'umount "$work/rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
  echo "debootstrap $suite with $packages" >&2
  debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" >&2
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar --sort=name --numeric-owner --xattrs -C "$work/rootfs" -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  touch "$rootfs_tar.sorted"
fi
# Entries in name order within each directory, as docker and buildkit write
# layers (Go's filepath.Walk): a tree in readdir order would scatter a
# package's files through the layer, which no real image does. (Rootfs
# tars cached before this are sorted once.)
if [[ ! -f $rootfs_tar.sorted ]]; then
  resort=$(mktemp -d)
  tar --numeric-owner --xattrs -C "$resort" -xf "$rootfs_tar"
  tar --sort=name --numeric-owner --xattrs -C "$resort" -cf "$rootfs_tar.tmp" .
  rm -rf "$resort"
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  touch "$rootfs_tar.sorted"
fi

layout="$out/layout"
added=""
[[ -z $add ]] || added=$(cd "$add" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
image_key=$(printf 'sorted\n%s\n%s\n%s\n%s\n%s\n' "$key" "$cmd" "$added" "$user" "$workdir" | sha256sum | cut -c1-16)
if [[ -f $out/layout-$tag.key && $(cat "$out/layout-$tag.key") == "$image_key" ]]; then
  echo "reusing oci:$layout:$tag" >&2
else
  [[ -d $layout ]] || umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  # The rootfs tar is the layer as it is (umoci insert of the unpacked tree
  # wrote layers without the last file's padding nor the end-of-archive
  # blocks here, which a strict tar reader refuses).
  umoci raw add-layer --image "$layout:$tag" "$rootfs_tar"
  if [[ -n $add ]]; then
    added_tar=$(mktemp --suffix=.tar)
    tar --numeric-owner --owner=0 --group=0 -C "$add" -cf "$added_tar" .
    umoci raw add-layer --image "$layout:$tag" "$added_tar"
    rm -f "$added_tar"
  fi
  umoci config --image "$layout:$tag" --os linux --architecture amd64 \
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.cmd /bin/sh --config.cmd -c --config.cmd "$cmd" \
    ${user:+--config.user "$user"} ${workdir:+--config.workingdir "$workdir"}
  umoci gc --layout "$layout"
  echo "$image_key" > "$out/layout-$tag.key"
  echo "built oci:$layout:$tag" >&2
fi
if [[ -n $push ]]; then
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://$push"
  echo "pushed docker://$push" >&2
fi
