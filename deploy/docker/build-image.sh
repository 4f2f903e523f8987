#!/usr/bin/env bash
# Builds the fedcare image from binaries already compiled on this machine (Debian 12), with the
# Dockerfile's `prebuilt` target: no Rust toolchain image, no registry. What CI and the deploy
# tests use; a hospital with internet access can instead build from source (deploy/README.md).
#
#   deploy/docker/build-image.sh [--bin DIR] [--tag TAG]
#     --bin DIR   folder holding coordinator and site-agent (default: target/release if both
#                 are there, else target/debug)
#     --tag TAG   image name (default: fedcare:latest)
#
# The binaries are stripped into a temporary build context, so nothing else of the clone (no
# source, no target/) is sent to Docker. The base image is built locally first if missing
# (deploy/docker/base-image.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin='' tag=fedcare:latest
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: $0 [--bin DIR] [--tag TAG]" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  bin=$root/target/debug
  [ -x "$root/target/release/coordinator" ] && [ -x "$root/target/release/site-agent" ] && bin=$root/target/release
fi
for b in coordinator site-agent; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: cargo build -p coordinator -p site-agent (or --release) first" >&2; exit 1; }
done
base=$(sed -n 's/^ARG DEBIAN_IMAGE=//p' "$here/Dockerfile")
"$here/base-image.sh" "$base"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/deploy/docker/prebuilt"
cp "$here/Dockerfile" "$ctx/deploy/docker/Dockerfile"
for b in coordinator site-agent; do
  strip -o "$ctx/deploy/docker/prebuilt/$b" "$bin/$b"
  chmod 0755 "$ctx/deploy/docker/prebuilt/$b"
done
echo "image $tag: from $bin (stripped: $(du -ch "$ctx"/deploy/docker/prebuilt/* | tail -1 | cut -f1))"
docker build -q --target prebuilt -t "$tag" -f "$ctx/deploy/docker/Dockerfile" "$ctx" > /dev/null 2> "$ctx/build.log" \
  || { cat "$ctx/build.log" >&2; exit 1; }
# The image this tag named before, now untagged: remove it (only fedcare's, only untagged).
docker image prune -f --filter label=org.opencontainers.image.title=fedcare > /dev/null
echo "image $tag: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
