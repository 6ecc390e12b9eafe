#!/usr/bin/env bash
# What the slow-volume rig (tests/rig/slowfs.py) needs on the machine: Debian's fuse3 (fusermount3)
# and libfuse2 (the library mfusepy loads), installed when missing. The rig mounts and unmounts its
# own filesystem per test.
#
#   bash .ci/fuse-setup.sh && make test
set -euo pipefail
# shellcheck source=.ci/apt.sh
source "$(dirname "$0")/apt.sh"

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need+=(libfuse2)

apt_install_missing fuse-setup "${need[@]}"
[ -e /dev/fuse ] || { echo "fuse-setup: /dev/fuse is missing (the slow-volume tests need it)" >&2; exit 1; }
echo "fuse-setup: $(fusermount3 --version 2>&1)"
