#!/usr/bin/env bash
# Installs what ferry and its tests need on a fresh machine. Each part is idempotent and
# skips work when its inputs did not change (a stamp holds the hash of the inputs).
#   bootstrap.sh python     venv + pip install -e .[dev]
#   bootstrap.sh dashboard  npm ci + npm run build in dashboard/ (when it has a package.json)
#   bootstrap.sh node       npm ci in bench/peers (Node `ws`: interop tests and the bench peer)
#   bootstrap.sh system     Debian packages the tests drive (chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

stamp_ok() {  # stamp_ok NAME FILES... : true when FILES hash to what NAME's stamp holds
    local name=$1; shift
    local sum; sum=$(cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ -f "$ROOT/.venv/.stamp-$name" ] && [ "$(cat "$ROOT/.venv/.stamp-$name")" = "$sum" ]
}
stamp_set() {
    local name=$1; shift
    cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1 > "$ROOT/.venv/.stamp-$name"
}

python_deps() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if ! stamp_ok python pyproject.toml; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e '.[dev]'
        stamp_set python pyproject.toml
    fi
}

npm_ci() {  # npm_ci DIR
    local dir=$1 name; name=$(echo "$dir" | tr '/' '-')
    [ -f "$dir/package.json" ] || return 0
    if [ ! -d "$dir/node_modules" ] || ! stamp_ok "npm-$name" "$dir/package-lock.json"; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        stamp_set "npm-$name" "$dir/package-lock.json"
    fi
}

dashboard() {
    python_deps
    [ -f dashboard/package.json ] || return 0
    npm_ci dashboard
    (cd dashboard && npm run build --silent)
}

system_deps() {
    local need=()
    [ -x /usr/bin/chromium ] || need+=(chromium)
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
    if [ ${#need[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

for part in "$@"; do
    case $part in
        python) python_deps ;;
        dashboard) dashboard ;;
        node) mkdir -p .venv; npm_ci bench/peers ;;
        system) system_deps ;;
        *) echo "bootstrap.sh: unknown part $part" >&2; exit 2 ;;
    esac
done
