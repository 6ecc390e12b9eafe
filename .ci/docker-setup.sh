#!/usr/bin/env bash
# What the end-to-end tier needs on the machine: Debian's docker.io (dockerd + docker CLI),
# docker-registry and debootstrap, installed when missing. Nothing is started here: the tier's
# pytest fixture (tests/rig/docker_env.py) starts its own private dockerd, base image, wheelhouse
# server and registry, and stops them by pid when the session ends.
#
#   bash .ci/docker-setup.sh && make test-e2e
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have dockerd || need+=(docker.io)
have docker-registry || need+=(docker-registry)
have debootstrap || need+=(debootstrap)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "docker-setup: root is needed to install ${need[*]}" >&2
        exit 1
    fi
    echo "docker-setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "docker-setup: $(dockerd --version 2>/dev/null || /usr/sbin/dockerd --version)"
