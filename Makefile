# The two set-up commands of the README: `make run` and `make test`.
# Both work on a fresh machine: they create the venv and install what they need.
.PHONY: run test lint deps dashboard

run: deps dashboard
	.venv/bin/ferry serve

test:
	scripts/test.sh

deps:
	scripts/bootstrap.sh python

dashboard:
	scripts/bootstrap.sh dashboard

lint: deps
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
