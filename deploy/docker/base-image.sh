#!/usr/bin/env bash
# Makes sure the base image the Dockerfile names (default debian:bookworm-slim) is there:
# pulled where a registry is reachable, else built locally for machines that cannot pull:
# debootstrap a minimal Debian 12 into a folder, trim it as Debian's -slim images are
# trimmed, and `docker import` it under that name. The Dockerfile is then built unchanged.
# Does nothing if the image is already there, so run it as often as you like.
#
#   deploy/docker/base-image.sh [IMAGE]     (debootstrap needs root and a Debian mirror)
#
# FEDCARE_DEBIAN_MIRROR overrides the mirror (default: the first deb.debian.org-style URI in
# this machine's apt sources, else http://deb.debian.org/debian).
set -euo pipefail
image=${1:-debian:bookworm-slim}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image: already present"
  exit 0
fi
# Where a registry is reachable, the real image.
if timeout 120 docker pull -q "$image" >/dev/null 2>&1; then
  echo "base image $image: pulled"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap (or deploy/test/setup.sh)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
mirror=${FEDCARE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
root=$(mktemp -d /var/tmp/fedcare-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base image $image: debootstrap --variant=minbase bookworm from $mirror (about a minute)"
debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# What Debian's -slim images leave out: documentation, man pages, locales, apt's caches.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/log/* "$root"/tmp/*
# The image's apt sources: the official mirror, as in Debian's own image.
echo "deb http://deb.debian.org/debian bookworm main" > "$root/etc/apt/sources.list"
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase bookworm (fedcare deploy/docker/base-image.sh)" \
  - "$image" > /dev/null
echo "base image $image: built ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
