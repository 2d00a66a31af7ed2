#!/usr/bin/env bash
# Build Portway's OCI image with buildah from scratch: no base image is pulled from a registry.
#
#   deploy/build-image.sh [TAG]            (default tag: localhost/portway:<version>)
#
# The root file system is a minimal Debian (mmdebstrap, from the apt mirror below) with
# python3; Portway and its dependencies go into a virtual environment in /opt/portway from
# wheels built here from this checkout. The image runs as the user portway (UID/GID 10001),
# keeps its data in the volume /var/lib/portway and reads /etc/portway/portway.toml.
#
# Environment:
#   BUILDAH          the buildah command, with storage options if any (default: buildah)
#   PYTHON           the Python that builds the wheels (default: .venv/bin/python, else python3)
#   IMAGE_SUITE      Debian suite of the image (default: bookworm)
#   IMAGE_MIRROR     Debian mirror (default: http://deb.debian.org/debian)
#   IMAGE_BASE       a root file system tarball to reuse; made there when missing
#                    (the Debian part takes minutes to download, the rest seconds)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

read -r -a BUILDAH <<<"${BUILDAH:-buildah}"
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
SUITE=${IMAGE_SUITE:-bookworm}
MIRROR=${IMAGE_MIRROR:-http://deb.debian.org/debian}
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TAG=${1:-localhost/portway:$VERSION}
UID_GID=10001

for tool in mmdebstrap "${BUILDAH[0]}"; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done

work=$(mktemp -d)
ctr=""
cleanup() {
  if [[ -n "$ctr" ]]; then "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "build-image: wheels of Portway and its dependencies"
# From a copy of the checkout: a wheel build writes build/ and src/*.egg-info where it runs,
# and two builds at once (one per test worker) in one tree fail on each other's files.
mkdir "$work/source"
cp -r pyproject.toml README.md LICENSE src "$work/source/"
find "$work/source/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
[[ "$PYTHON" != */* || "$PYTHON" == /* ]] || PYTHON=$PWD/$PYTHON  # still the venv's: no realpath
(cd "$work/source" && "$PYTHON" -m pip wheel --quiet --wheel-dir "$work/wheels" .)

base=${IMAGE_BASE:-$work/base.tar}
if [[ ! -s "$base" ]]; then
  echo "build-image: a minimal Debian $SUITE root file system (from $MIRROR)"
  mmdebstrap --quiet --variant=essential --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "$SUITE" "$work/base-new.tar" "$MIRROR"
  mv "$work/base-new.tar" "$base"
fi

ctr=$("${BUILDAH[@]}" from scratch)
root=$("${BUILDAH[@]}" mount "$ctr")
tar -xf "$base" -C "$root"
cp -r "$work/wheels" "$root/tmp/wheels"
echo "build-image: Portway into /opt/portway"
chroot "$root" /usr/bin/python3 -m venv /opt/portway
chroot "$root" /opt/portway/bin/pip install --quiet --no-index --find-links /tmp/wheels \
  --disable-pip-version-check portway
chroot "$root" /opt/portway/bin/pip uninstall --quiet --yes pip setuptools
rm -rf "$root/tmp/wheels" "$root/var/cache/apt" "$root/var/lib/apt/lists" "$root/var/log"/*
mkdir -p "$root/var/cache/apt" "$root/var/lib/apt/lists"

# The user the registry runs as (the image has no useradd; these lines are what it writes).
echo "portway:x:$UID_GID:$UID_GID:Portway:/var/lib/portway:/usr/sbin/nologin" >>"$root/etc/passwd"
echo "portway:x:$UID_GID:" >>"$root/etc/group"
echo "portway:!:1::::::" >>"$root/etc/shadow"
mkdir -p "$root/var/lib/portway" "$root/etc/portway"
install -m 0644 deploy/image-portway.toml "$root/etc/portway/portway.toml"
chown "$UID_GID:$UID_GID" "$root/var/lib/portway"
chmod 0750 "$root/var/lib/portway"
"${BUILDAH[@]}" unmount "$ctr" >/dev/null

"${BUILDAH[@]}" config \
  --user "$UID_GID:$UID_GID" \
  --workingdir /var/lib/portway \
  --port 8081/tcp \
  --volume /var/lib/portway \
  --env PYTHONUNBUFFERED=1 \
  --env PATH=/opt/portway/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --entrypoint '["/opt/portway/bin/portway", "serve", "--config", "/etc/portway/portway.toml"]' \
  --cmd '' \
  --stop-signal SIGTERM \
  --label org.opencontainers.image.title=Portway \
  --label "org.opencontainers.image.description=Container (Docker/OCI) repository manager" \
  --label "org.opencontainers.image.version=$VERSION" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.base.name=debian:$SUITE (mmdebstrap, essential)" \
  "$ctr"
"${BUILDAH[@]}" commit --quiet --rm "$ctr" "$TAG" >/dev/null
ctr=""
echo "build-image: built $TAG"
