# The two set-up commands of the README: `make run` and `make test`.
# Both work on a fresh machine: they create the venv and install what they need. `make run`
# installs the runtime only (what `ferry serve` needs); `make test` adds the dev tools.
.PHONY: run test lint deps dev-deps dashboard fuzz

run: deps dashboard
	.venv/bin/ferry serve

test:
	scripts/test.sh

deps:
	scripts/bootstrap.sh runtime

dev-deps:
	scripts/bootstrap.sh python

dashboard:
	scripts/bootstrap.sh dashboard

lint: dev-deps
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

# Coverage-guided fuzzing of the session + router (tests/core/fuzz_session.py) under
# atheris; FUZZ_RUNS inputs (default one million). A crash leaves crash-* files here.
FUZZ_RUNS ?= 1000000
fuzz: dev-deps
	.venv/bin/python -m pip install -q -e '.[fuzz]'
	.venv/bin/python -m tests.core.fuzz_session -runs=$(FUZZ_RUNS) -max_len=1500 -print_final_stats=1
