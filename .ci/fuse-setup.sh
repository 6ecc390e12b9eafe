#!/usr/bin/env bash
# What the slow-volume rig (tests/rig/slowfs.py) needs on the machine: Debian's fuse3 (fusermount3)
# and libfuse2 (the library mfusepy loads), installed when missing. The rig mounts and unmounts its
# own filesystem per test.
#
#   bash .ci/fuse-setup.sh && make test
set -euo pipefail

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need+=(libfuse2)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "fuse-setup: root is needed to install ${need[*]}" >&2
        exit 1
    fi
    echo "fuse-setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "fuse-setup: /dev/fuse is missing (the slow-volume tests need it)" >&2; exit 1; }
echo "fuse-setup: $(fusermount3 --version 2>&1)"
