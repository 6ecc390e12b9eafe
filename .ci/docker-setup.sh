#!/usr/bin/env bash
# What the end-to-end tier needs on the machine: Debian's docker.io (dockerd + docker CLI),
# docker-registry and debootstrap, installed when missing. Nothing is started here: the tier's
# pytest fixture (tests/rig/docker_env.py) starts its own private dockerd, base image, wheelhouse
# server and registry, and stops them by pid when the session ends.
#
#   bash .ci/docker-setup.sh && make test-e2e
set -euo pipefail
# shellcheck source=.ci/apt.sh
source "$(dirname "$0")/apt.sh"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have dockerd || need+=(docker.io)
have docker-registry || need+=(docker-registry)
have debootstrap || need+=(debootstrap)

apt_install_missing docker-setup "${need[@]}"
echo "docker-setup: $(dockerd --version 2>/dev/null || /usr/sbin/dockerd --version)"
