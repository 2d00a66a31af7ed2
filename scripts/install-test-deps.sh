#!/usr/bin/env bash
# Install the system tools the test suite drives (registries, clients, reverse proxies, load
# tools). Idempotent: does nothing when every package is present. Installs only as root;
# otherwise names what is missing and fails.
set -euo pipefail

PACKAGES=(
  skopeo
  podman
  buildah
  docker.io
  docker-registry
  nginx
  apache2
  apache2-utils
  haproxy
  caddy
  wrk
  hyperfine
  openssl
  uidmap
  fuse-overlayfs
  containernetworking-plugins
  crun
  runc
  conmon
  slirp4netns
  catatonit
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]] || ! dpkg -s "$pkg" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-test-deps: missing Debian packages: ${missing[*]}" >&2
  echo "install-test-deps: run as root, or: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "install-test-deps: installing ${missing[*]}"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
