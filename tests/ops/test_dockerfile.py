"""Dockerfile: hadolint- and checkov-clean, and the stages and targets issue 7 asks for.

No Docker engine here, so the image is checked statically; the `ferry` target's command
itself runs for real in test_entrypoint.py.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.ops.support import (
    DOCKERFILE,
    Stage,
    checkov,
    explain,
    failed_checks,
    known_ferry_settings,
    ops_tool,
    parse_dockerfile,
    run,
)

EXACT_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[-.\w]*(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse_dockerfile()}


def test_hadolint_finds_nothing() -> None:
    proc = run([ops_tool("hadolint"), "--format", "json", DOCKERFILE])
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout) == [], explain(proc)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nUSER root\n")
    proc = run([ops_tool("hadolint"), "--format", "json", bad])
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3007", "DL3013", "DL3002"} <= codes, codes


def test_checkov_finds_nothing() -> None:
    report = checkov("--framework", "dockerfile", "--file", DOCKERFILE)
    assert not failed_checks(report), "\n".join(failed_checks(report))
    assert report["results"]["passed_checks"], "checkov ran no Dockerfile check"


def test_stages_and_default_target(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["dashboard-build", "python-build", "dashboard", "ferry"]
    # The last stage is what a plain `docker build .` produces.
    assert parse_dockerfile()[-1].name == "ferry"
    for stage in stages.values():
        assert EXACT_TAG.match(stage.base), f"{stage.name}: base image {stage.base} not pinned"
    assert stages["dashboard-build"].base.startswith("node:20.")
    assert stages["python-build"].base.startswith("python:3.11.")
    assert stages["ferry"].base.startswith("python:3.11.")
    assert "slim" in stages["ferry"].base
    assert stages["dashboard"].base.startswith("httpd:")


def test_dashboard_is_built_with_npm_ci_and_vite(stages: dict[str, Stage]) -> None:
    build = stages["dashboard-build"]
    workdir = build.last("WORKDIR")
    assert workdir and workdir.value.endswith("/dashboard")
    runs = " && ".join(i.value for i in build.all("RUN"))
    assert "npm ci" in runs and "npm run build" in runs
    # The lockfile is copied (and npm ci'd) before the sources: dependency layer caching.
    copies = [i.value for i in build.all("COPY")]
    assert "package-lock.json" in copies[0]


def test_ferry_is_pip_installed_without_extras(stages: dict[str, Stage]) -> None:
    runs = " ".join(i.value for i in stages["python-build"].all("RUN"))
    # `.` alone: the runtime, never `.[bench]` or `.[dev]` (tests/ops/test_setup.py checks
    # that this set serves).
    assert re.search(r"pip install (--no-cache-dir )?\.(\s|$)", runs), runs
    assert "[" not in runs.split("pip install", 1)[1].split("&&")[0], runs


def test_every_python_package_is_copied_into_the_build(stages: dict[str, Stage]) -> None:
    """What pyproject.toml packages (`common*`, `core*`, ...) must be in the image, or
    `ferry` fails at its first import there."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = {i.value.split()[0].rstrip("/") for i in stages["python-build"].all("COPY")}
    assert packages <= copied, packages - copied


def test_the_build_commit_reaches_the_image(stages: dict[str, Stage]) -> None:
    ferry = stages["ferry"]
    (arg,) = [i for i in ferry.all("ARG") if i.value.startswith("FERRY_BUILD_COMMIT")]
    assert ferry.env()["FERRY_BUILD_COMMIT"] == "${FERRY_BUILD_COMMIT}"
    assert arg.line < min(i.line for i in ferry.all("ENV") if "FERRY_BUILD_COMMIT" in i.value)
    labels = " ".join(i.value for i in ferry.all("LABEL"))
    assert "org.opencontainers.image.revision=${FERRY_BUILD_COMMIT}" in labels


def test_ferry_target_runs_serve_as_non_root_with_the_wal_on_a_volume(
    stages: dict[str, Stage],
) -> None:
    ferry = stages["ferry"]
    user = ferry.last("USER")
    assert user is not None
    assert user.value.split(":")[0] not in ("root", "0"), user.value
    entrypoint, cmd = ferry.last("ENTRYPOINT"), ferry.last("CMD")
    assert entrypoint and cmd
    # scripts/entrypoint.sh (refuses placeholder secrets), then `ferry serve`.
    assert (entrypoint.exec_form() or []) + (cmd.exec_form() or []) == [
        "ferry-entrypoint",
        "serve",
    ]
    assert 'exec ferry "$@"' in (ROOT / "scripts" / "entrypoint.sh").read_text()
    expose = ferry.last("EXPOSE")
    assert expose and expose.value.split() == ["8080"]
    volume = ferry.last("VOLUME")
    assert volume and json.loads(volume.value) == ["/data"]
    env = ferry.env()
    assert env["FERRY_WAL_DIR"] == "/data/wal"
    assert env["FERRY_DB_URL"] == "sqlite:////data/ferry.db"
    ferry_env = {k for k in env if k.startswith("FERRY_")}
    assert ferry_env <= known_ferry_settings(), ferry_env - known_ferry_settings()


def test_ferry_target_serves_the_dashboard_build(stages: dict[str, Stage]) -> None:
    ferry = stages["ferry"]
    copies = [i.value for i in ferry.all("COPY")]
    dashboard_copy = [c for c in copies if "--from=dashboard-build" in c]
    assert dashboard_copy, copies
    target = dashboard_copy[0].split()[-1].rstrip("/")
    assert ferry.env()["FERRY_DASHBOARD_DIR"].rstrip("/") == target


def test_ferry_healthcheck_uses_python_on_healthz(stages: dict[str, Stage]) -> None:
    check = stages["ferry"].last("HEALTHCHECK")
    assert check is not None
    argv = check.exec_form()
    assert argv and argv[0] == "python", "no curl in a slim image: python does the check"
    assert "/healthz" in argv[-1]
    assert re.search(r"--interval=\d+s", check.value) and re.search(r"--timeout=\d+s", check.value)


def test_dashboard_target_is_httpd_serving_dist(stages: dict[str, Stage]) -> None:
    dashboard = stages["dashboard"]
    copies = [i.value for i in dashboard.all("COPY")]
    assert any(
        "--from=dashboard-build" in c and c.endswith("/usr/local/apache2/htdocs/") for c in copies
    ), copies
    expose = dashboard.last("EXPOSE")
    assert expose and expose.value.split() == ["80"]
    assert dashboard.last("HEALTHCHECK") is not None
    conf = (ROOT / "ops/httpd/ferry-dashboard.conf").read_text()
    assert re.search(r'ProxyPass\s+"/ws"\s+"\$\{FERRY_UPSTREAM\}/ws"\s+upgrade=websocket', conf)
    assert "ProxyRequests Off" in conf


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; dirs match children."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        candidates = [path] + [
            str(Path(*Path(path).parts[:n])) for n in range(1, len(Path(path).parts))
        ]
        if any(
            fnmatch.fnmatch(c, body) or fnmatch.fnmatch(c, body.replace("**/", ""))
            for c in candidates
        ):
            included = negate
    return included


def test_dockerignore_sends_what_copy_needs_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: nothing reaches the context by accident"
    for stage in parse_dockerfile():
        for copy in stage.all("COPY"):
            if "--from=" in copy.value:
                continue
            for source in copy.value.split()[:-1]:
                assert _dockerignore_allows(source.rstrip("/"), patterns), source
    for private in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        "data/wal/x.wal",
        "ops/terraform/terraform.tfstate",
        "dashboard/node_modules/x/index.js",
        "dashboard/dist/index.html",
    ):
        assert not _dockerignore_allows(private, patterns), private
