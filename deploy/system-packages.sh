#!/usr/bin/env bash
# The Debian packages that the tests and demos use beside Python: HAProxy (deploy/replicas.py), buildah, podman
# and mmdebstrap (deploy/image.py, where no Docker engine runs) and Chromium (the duplicates report, opened headless
# in tests/test_client.py). Installs the missing ones when run as root; otherwise names them.
set -euo pipefail
missing=()
for command in haproxy buildah podman mmdebstrap chromium; do
    command -v "$command" >/dev/null || missing+=("$command")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]} (sudo apt-get install ${missing[*]}); the tests that need them will fail" >&2
    exit 0
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
