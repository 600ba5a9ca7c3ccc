#!/usr/bin/env bash
# The whole test suite: install what it needs, then lint, type-check and run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh python system node dashboard ops
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
