#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages the set-up needs. As root: apt-get. As
# another user: `sudo -n apt-get` when sudo works without a password prompt; otherwise one
# line saying exactly what to run, and exit 1 (never a half-done `apt-get` that fails on
# permissions).
set -euo pipefail
[ $# -gt 0 ] || exit 0
cmd=(apt-get)
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        cmd=(sudo -n apt-get)
    else
        echo "missing Debian packages: $*; as root (or with sudo) run: apt-get update && apt-get install -y --no-install-recommends $*" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${cmd[@]}" update -qq
"${cmd[@]}" install -y -qq --no-install-recommends "$@" >/dev/null
