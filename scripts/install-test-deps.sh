#!/usr/bin/env bash
# Install the system tools the test suite drives (registries, clients, reverse proxies, load
# tools, PostgreSQL and a one-host Ceph with its S3 gateway). Idempotent: does nothing when every package is present. Installs only as root;
# otherwise names what is missing and fails.
set -euo pipefail

PACKAGES=(
  skopeo
  podman
  chromium  # the web UI tests drive it with Playwright (tests/support/browser.py)
  buildah
  mmdebstrap  # deploy/build-image.sh makes the image's Debian root with it (tests/test_image.py)
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
  postgresql
  radosgw
  ceph-mon
  ceph-osd
  systemd
  faketime
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # `dpkg -s` also succeeds for a removed package whose config files remain: check the state.
  status=$(dpkg -s "$pkg" 2>/dev/null || true)
  if [[ "$status" != *$'\nStatus: install ok installed\n'* ]]; then
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
# Wait for another apt/dpkg run (unattended upgrades on a fresh machine) instead of failing.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update
DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y --no-install-recommends "${missing[@]}"
