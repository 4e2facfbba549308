#!/usr/bin/env bash
# Builds the peer that `tools/bench.py` compares loci with and Debian does
# not package: Nydus 2.2.0 (nydusd, nydus-image) from crates.io into
# ${NYDUS_ROOT:-/opt/nydus}; about 10 minutes on 2 cores, skipped when
# already there. (stargz: Debian's stargz-snapshotter package, installed by
# install-deps.sh, has only ctr-remote; its snapshotter daemon is not
# packaged, so the benchmark reports stargz as not found.)
set -euo pipefail
root=${NYDUS_ROOT:-/opt/nydus}
if [[ -x $root/bin/nydusd && -x $root/bin/nydus-image ]]; then
  echo "nydus already in $root" >&2
  exit 0
fi
# One retry: a build of this size on a small machine has failed once here
# for no reason that a second attempt kept.
for attempt in 1 2; do
  if CARGO_TERM_PROGRESS_WHEN=never cargo install nydus-rs --version 2.2.0 --locked --root "$root"; then
    exit 0
  fi
  echo "cargo install nydus-rs failed (attempt $attempt)" >&2
done
exit 1
