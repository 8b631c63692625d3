#!/usr/bin/env bash
# The worker image for development and tests, built on this machine without any registry: a Debian rootfs
# made by mmdebstrap from Debian's packages (Python 3.11), the project's pinned Ray (constraints.txt, from
# the uv cache or PyPI) copied in with its bytecode, an unprivileged user (1000) and /scratch owned by it,
# imported as an image whose tag is a hash of what went in. An image of that tag already there: nothing to do.
#
#   gpu_pool/image/build-test-image.sh [ENGINE]    # ENGINE: podman (default) or docker; prints the tag
#
# Production images come from gpu_pool/Containerfile (a CUDA runtime base); both carry the label
# org.gpu-portal.ray-version, which the agent checks against its own Ray before it starts a node.
set -euo pipefail

ENGINE=${1:-podman}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
UV=${UV:-$ROOT/.venv/bin/uv}
RAY_VERSION=$(sed -n 's/^ray==//p' "$ROOT/constraints.txt")
HASH=$(cat "$ROOT/constraints.txt" "$0" | sha256sum | cut -c1-12)
TAG=localhost/gpu-pool-worker:test-$HASH

if "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi
started=$(date +%s)
WORK=$(mktemp -d /var/tmp/gpu-pool-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs

# Debian's essential set plus Python 3.11 (`python` included); documentation and locales left out.
mmdebstrap --quiet --variant=essential --include=python3,python-is-python3,ca-certificates,libstdc++6 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$ROOTFS" http://deb.debian.org/debian >&2

# Ray at the portal's version and what it needs, compiled to bytecode (the root filesystem is read-only).
SITE=$ROOTFS/usr/local/lib/python3.11/dist-packages
UV_CACHE_DIR=${UV_CACHE_DIR:-$ROOT/.uv-cache} "$UV" pip install --quiet --python "$PYTHON" --target "$SITE" \
    --constraint "$ROOT/constraints.txt" --compile-bytecode "ray[default]==$RAY_VERSION" >&2
rm -rf "$SITE/bin"
cat > "$ROOTFS/usr/local/bin/ray" <<'RAY'
#!/usr/bin/python3
import sys
from ray.scripts.scripts import main
sys.exit(main())
RAY
chmod 755 "$ROOTFS/usr/local/bin/ray"

# The user Ray runs as, and the scratch mount point it owns (a new volume takes this owner).
echo "ray:x:1000:1000:ray:/scratch:/bin/sh" >> "$ROOTFS/etc/passwd"
echo "ray:x:1000:" >> "$ROOTFS/etc/group"
mkdir -p "$ROOTFS/scratch"
chown 1000:1000 "$ROOTFS/scratch"
rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/*

tar -C "$ROOTFS" --numeric-owner -cf - . | "$ENGINE" import \
    --change "USER=1000:1000" --change "WORKDIR=/scratch" --change "ENV=HOME=/scratch" \
    --change "ENV=PATH=/usr/local/bin:/usr/bin:/bin" \
    --change "LABEL=org.gpu-portal.ray-version=$RAY_VERSION" \
    --change "LABEL=org.gpu-portal.flavor=test" \
    - "$TAG" >&2
echo "built $TAG in $(($(date +%s) - started)) s" >&2
echo "$TAG"
