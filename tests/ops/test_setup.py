"""The README's set-up commands, run for real.

`make run`'s install (`make deps`) goes into a fresh venv in a copy of the repository and
must hold the runtime only: no test or lint tool, no benchmark package (hdrhistogram has no
Linux arm64 wheel, which is what broke `docker compose up --build` on Apple Silicon). In that
venv `ferry serve`, `ferry replay` and `ferry wal` work, `ferry serve` really serves, and
`ferry bench` says which extra it needs. `make test` stops first, with one line, when no
MariaDB answers; a non-root user missing a Debian package is told what to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, UNIT, free_port, unavailable
from tests.ops.support import explain, run

# Packages of the dev and bench extras that must not reach a runtime install.
NOT_RUNTIME = {"pytest", "ruff", "mypy", "playwright", "hypothesis", "hdrhistogram",
               "matplotlib", "websockets", "numpy", "python-hcl2"}  # fmt: skip
COPIED = (
    "pyproject.toml",
    "README.md",
    "Makefile",
    "common/",
    "core/",
    "wal/",
    "bench/",
    "cluster/",
    "scripts/",
)


def _copy_repo(dest: Path) -> None:
    listed = run(["git", "ls-files", "-co", "--exclude-standard"]).stdout.splitlines()
    for name in listed:
        if name.startswith(COPIED) and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FERRY_", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST"))
    }


@pytest.fixture(scope="module")
def runtime_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository after `make deps` (what `make run` installs first)."""
    repo = tmp_path_factory.mktemp("runtime-repo")
    _copy_repo(repo)
    proc = run(["make", "deps"], cwd=repo, env=_clean_env(), timeout=120 * UNIT)
    assert proc.returncode == 0, explain(proc)
    return repo


def test_make_run_installs_the_runtime_only(runtime_repo: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "run: deps dashboard" in makefile
    python = runtime_repo / ".venv" / "bin" / "python"
    listed = run([python, "-m", "pip", "list", "--format", "json"], env=_clean_env())
    assert listed.returncode == 0, explain(listed)
    installed = {_norm(p["name"]) for p in json.loads(listed.stdout)}
    assert not installed & NOT_RUNTIME, installed & NOT_RUNTIME
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in runtime:
        name = _norm(re.split(r"[=<>]", requirement)[0])
        assert name in installed, (name, sorted(installed))


@pytest.mark.parametrize("command", ["serve", "replay", "wal", "token"])
def test_runtime_commands_work_without_the_extras(runtime_repo: Path, command: str) -> None:
    ferry = runtime_repo / ".venv" / "bin" / "ferry"
    proc = run([ferry, command, "--help"], env=_clean_env(), cwd=runtime_repo)
    assert proc.returncode == 0, explain(proc)
    assert "usage" in proc.stdout.lower(), explain(proc)


def test_ferry_serve_serves_from_the_runtime_install(runtime_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    env = _clean_env() | {
        "FERRY_HOST": "127.0.0.1",
        "FERRY_PORT": str(port),
        "FERRY_WAL_DIR": str(tmp_path / "wal"),
        "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
        "FERRY_NODE_ID": "runtime-only",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [runtime_repo / ".venv" / "bin" / "ferry", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 8 * UNIT
        status = None
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    status = r.status
            except OSError:
                time.sleep(0.1)
        assert status == 200, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=4 * UNIT) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(UNIT)


def test_ferry_bench_names_the_extra_it_needs(runtime_repo: Path) -> None:
    ferry = runtime_repo / ".venv" / "bin" / "ferry"
    proc = run([ferry, "bench", "fanout", "--seconds", "1"], env=_clean_env(), cwd=runtime_repo)
    assert proc.returncode == 2, explain(proc)
    assert "bench` extra" in proc.stderr and ".[bench]" in proc.stderr, explain(proc)
    assert "Traceback" not in proc.stderr


def test_license_is_an_spdx_expression(runtime_repo: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    python = runtime_repo / ".venv" / "bin" / "python"
    proc = run(
        [python, "-c", "import importlib.metadata as m; print(m.metadata('ferry')['License-Expression'])"],
        env=_clean_env(),
    )  # fmt: skip
    assert proc.stdout.strip() == "Apache-2.0", explain(proc)


def test_make_test_stops_first_when_no_mariadb_answers() -> None:
    port = free_port()  # nothing listens there
    env = _clean_env() | {"MARIADB_PORT": str(port), "CI": "true"}
    proc = run(["scripts/test.sh"], env=env, timeout=60 * UNIT)
    assert proc.returncode != 0, explain(proc)
    assert "== ruff" not in proc.stdout and "== pytest" not in proc.stdout, explain(proc)
    lines = [line for line in proc.stderr.splitlines() if "MariaDB" in line]
    assert len(lines) == 1, explain(proc)
    (line,) = lines
    assert f"127.0.0.1:{port}" in line and "docker run" in line and "service mariadb" in line


def test_a_non_root_user_is_told_what_to_install() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        unavailable("needs root and setpriv to act as an unprivileged user")
    proc = run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         ROOT / "scripts" / "apt-install.sh", "chromium", "mariadb-server"],
        env=_clean_env() | {"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.count("\n") == 1, explain(proc)
    assert "apt-get install -y --no-install-recommends chromium mariadb-server" in proc.stderr
