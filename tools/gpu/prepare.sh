#!/bin/sh
# Fills .device/ (git-ignored) with what tools/gpu/run.sh needs on a lent GPU machine, which can
# download nothing: the pinned Deno binary (xz), the Vulkan loader and GL .debs, and the npm
# packages the benches import (a DENO_DIR's npm cache, tar.xz). Run here, once, before the
# device call; then: run(command="sh tools/gpu/run.sh", carry=[".device"]).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
dev=.device
mkdir -p "$dev/gl"
./bin/deno --version >/dev/null # installs the pinned Deno on first use
if [ ! -s "$dev/deno.xz" ]; then
  xz -T0 -9 -c "$(readlink -f tools/deno/node_modules/.bin/deno)" >"$dev/deno.xz.part"
  mv "$dev/deno.xz.part" "$dev/deno.xz"
fi
if ! ls "$dev"/gl/libvulkan1_*.deb >/dev/null 2>&1; then
  lists=/tmp/amd64-lists
  mkdir -p "$lists/partial"
  o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd "$dev/gl" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 \
    libgles2 >/dev/null)
fi
tmp=$(mktemp -d)
# shellcheck disable=SC2046
DENO_DIR="$tmp" ./bin/deno cache bench/gpu_report.ts bench/kernels.ts bench/decode.ts \
  bench/profile.ts bench/budget.ts bench/sampler.ts $(cat tools/gpu/tests.list) >/dev/null
tar -cJf "$dev/deno_dir.tar.xz" -C "$tmp" npm
rm -rf "$tmp"
du -sh "$dev"/deno.xz "$dev"/gl "$dev"/deno_dir.tar.xz
