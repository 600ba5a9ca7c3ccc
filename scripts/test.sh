#!/usr/bin/env bash
# The whole test suite: install what it needs, then lint, type-check and run pytest.
# The database comes first: without a MariaDB on 127.0.0.1:3306 it stops here with one line
# saying what is missing and how to get it (bootstrap.sh mariadb), not at one test's assert.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh python system mariadb node dashboard ops
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
