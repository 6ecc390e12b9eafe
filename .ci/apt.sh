# Sourced by the .ci/*-setup.sh scripts.

# apt_install_missing WHO PACKAGE...: install the Debian packages named (those found missing) as
# root, or stop with one line saying root is needed; WHO starts every message.
apt_install_missing() {
    local who=$1
    shift
    [ "$#" -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "$who: root is needed to install $*" >&2
        exit 1
    fi
    echo "$who: installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
