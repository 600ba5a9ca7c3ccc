"""GitHub Actions workflows: actionlint- and checkov-clean, every action pinned by commit SHA,
pull requests build the images without pushing, and the deploy runs only after CI passed on
the commit it deploys, moves `main` last and waits for that commit on /healthz (its wait
step runs here for real against a local stand-in for the relay)."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, UNIT
from tests.ops.support import checkov, explain, failed_checks, ops_tool, run

WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = job["steps"]
    return steps


def test_actionlint_passes() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"ci.yml", "deploy.yml"}
    proc = run([ops_tool("actionlint"), *files])
    assert proc.returncode == 0 and not proc.stdout.strip(), explain(proc)


def test_actionlint_does_catch_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: missing\n"
        "    steps:\n      - run: echo ${{ github.no_such_field }}\n"
    )
    proc = run([ops_tool("actionlint"), bad])
    assert proc.returncode == 1, explain(proc)
    assert "missing" in proc.stdout and "no_such_field" in proc.stdout, explain(proc)


def test_checkov_finds_nothing() -> None:
    report = checkov("--framework", "github_actions", "--directory", ROOT / ".github")
    assert not failed_checks(report), "\n".join(failed_checks(report))
    assert report["results"]["passed_checks"], "checkov ran no workflow check"


def test_ci_runs_make_test_on_push_and_pull_request_with_mariadb() -> None:
    ci = _load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    job = ci["jobs"]["test"]
    assert str(job["runs-on"]).startswith("ubuntu")
    assert job["env"]["CI"] == "true"
    assert any(step.get("run") == "make test" for step in _steps(job))
    (db,) = job["services"].values()
    assert db["image"].startswith("mariadb:") and db["image"].count(".") >= 2
    assert "3306:3306" in db["ports"]
    assert db["env"]["MARIADB_DATABASE"] == "test"
    assert db["env"]["MARIADB_ALLOW_EMPTY_ROOT_PASSWORD"] == "1"
    assert "--health-cmd" in db["options"]
    assert ci["permissions"] == {"contents": "read"}


def test_ci_builds_both_images_without_pushing() -> None:
    ci = _load("ci.yml")
    assert "pull_request" in ci["on"]
    builds = [
        s
        for s in _steps(ci["jobs"]["image"])
        if str(s.get("uses", "")).startswith("docker/build-push-action@")
    ]
    assert {b["with"]["target"] for b in builds} == {"ferry", "dashboard"}
    assert all(b["with"]["push"] is False for b in builds)
    (ferry,) = [b for b in builds if b["with"]["target"] == "ferry"]
    assert "linux/arm64" in ferry["with"]["platforms"]
    assert "FERRY_BUILD_COMMIT=${{ github.sha }}" in ferry["with"]["build-args"]


def test_deploy_runs_only_after_ci_passed_on_that_commit() -> None:
    deploy = _load("deploy.yml")
    assert set(deploy["on"]) == {"workflow_run"}, "no push trigger: CI must pass first"
    trigger = deploy["on"]["workflow_run"]
    assert trigger["workflows"] == [_load("ci.yml")["name"]]
    assert trigger["types"] == ["completed"] and trigger["branches"] == ["main"]
    images, apply = deploy["jobs"]["images"], deploy["jobs"]["deploy"]
    condition = " ".join(images["if"].split())
    for clause in (
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        "github.event.workflow_run.head_branch == 'main'",
        "github.event.workflow_run.head_repository.full_name == github.repository",
    ):
        assert clause in condition
    assert apply["needs"] == "images"
    assert deploy["env"]["COMMIT"] == "${{ github.event.workflow_run.head_sha }}"
    # Both jobs check out and build the commit CI tested, not main's current head.
    for job in (images, apply):
        (checkout,) = [
            s for s in _steps(job) if str(s.get("uses", "")).startswith("actions/checkout@")
        ]
        assert checkout["with"]["ref"] == "${{ github.event.workflow_run.head_sha }}"
    # Never two deploys at once, and a running one is not cancelled (ops/README.md).
    assert deploy["concurrency"]["cancel-in-progress"] is False


def test_deploy_pushes_sha_tags_and_moves_main_last() -> None:
    deploy = _load("deploy.yml")
    images, apply = deploy["jobs"]["images"], deploy["jobs"]["deploy"]
    metas = [s for s in _steps(images) if str(s.get("uses", "")).startswith("docker/metadata")]
    for meta in metas:
        assert meta["with"]["tags"].strip().splitlines() == [
            "type=raw,value=sha-${{ github.event.workflow_run.head_sha }}"
        ]
    pushes = [s for s in _steps(images) if str(s.get("uses", "")).startswith("docker/build-push")]
    assert {s["with"]["target"] for s in pushes} == {"ferry", "dashboard"}
    assert all(s["with"]["push"] is True for s in pushes)
    (ferry,) = [s for s in pushes if s["with"]["target"] == "ferry"]
    assert (
        "FERRY_BUILD_COMMIT=${{ github.event.workflow_run.head_sha }}"
        in ferry["with"]["build-args"]
    )
    assert ":main" not in yaml.safe_dump(images) and "value=main" not in yaml.safe_dump(images)

    names = [str(s.get("name", s.get("uses", ""))) for s in _steps(apply)]
    runs = {str(s.get("name")): str(s.get("run", "")) for s in _steps(apply)}
    order = [
        names.index(n)
        for n in ("terraform apply", "Promote sha-<commit> to main", "Wait for the new commit")
    ]
    assert order == sorted(order)
    assert (
        'imagetools create --tag "$name:main" "$name:sha-$COMMIT"'
        in runs["Promote sha-<commit> to main"]
    )
    assert any("terraform init" in r for r in runs.values())
    env = apply["env"]
    for key in ("TF_VAR_do_token", "TF_VAR_cloudflare_api_token", "TF_VAR_vercel_api_token"):
        assert env[key].startswith("${{ secrets."), key


OLD, NEW = "a" * 40, "b" * 40


class _Relay(http.server.BaseHTTPRequestHandler):
    """/healthz of a relay that is being rolled out: the old commit, then the new one."""

    answers: list[str] = []
    polls = 0

    def do_GET(self) -> None:
        type(self).polls += 1
        body = self.answers[min(self.polls, len(self.answers)) - 1].encode()
        self.send_response(200 if body else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def relay() -> Iterator[tuple[str, type[_Relay]]]:
    handler = type("Relay", (_Relay,), {"answers": [], "polls": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    server.shutdown()
    server.server_close()


def _run_wait_step(tmp_path: Path, url: str) -> Any:
    (step,) = [
        s
        for s in _steps(_load("deploy.yml")["jobs"]["deploy"])
        if s.get("name") == "Wait for the new commit"
    ]
    script = tmp_path / "wait.sh"
    script.write_text(step["run"])
    stubs = tmp_path / "bin"
    stubs.mkdir()
    # `terraform output -raw relay_health_url` and a `sleep` that does not wait.
    (stubs / "terraform").write_text(f"#!/bin/sh\nprintf '%s' '{url}'\n")
    (stubs / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "COMMIT": NEW}
    # GitHub runs `run:` steps as `bash -e {0}`.
    return run(["bash", "-e", script], env=env, timeout=UNIT * 12)


def test_wait_step_waits_until_the_new_commit_serves(
    tmp_path: Path, relay: tuple[str, type[_Relay]]
) -> None:
    url, handler = relay
    handler.answers = ["", f"ok 0.1.0 {OLD}\n", f"ok 0.1.0 {OLD}\n", f"ok 0.1.0 {NEW}\n"]
    proc = _run_wait_step(tmp_path, url)
    assert proc.returncode == 0, explain(proc)
    assert handler.polls == 4, explain(proc)  # down, old, old, then new
    assert f"relay serves 0.1.0 at {NEW}" in proc.stdout


def test_wait_step_fails_when_the_old_commit_keeps_serving(
    tmp_path: Path, relay: tuple[str, type[_Relay]]
) -> None:
    url, handler = relay
    handler.answers = [f"ok 0.1.0 {OLD}\n"]  # healthy, but never the new commit
    proc = _run_wait_step(tmp_path, url)
    assert proc.returncode == 1, explain(proc)
    assert handler.polls == 60
    assert f"did not report {NEW}" in proc.stdout


PINNED = re.compile(r"^\s*(?:-\s*)?uses:\s*([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # v\d+\.\d+\.\d+\s*$")


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_actions_are_pinned_by_commit_sha(name: str) -> None:
    lines = [line for line in (WORKFLOWS / name).read_text().splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        assert PINNED.match(line), f"{name}: not pinned to a SHA with its release noted: {line}"
    # One SHA per action everywhere (a bump changes them all).
    shas: dict[str, set[str]] = {}
    for path in WORKFLOWS.glob("*.yml"):
        for line in path.read_text().splitlines():
            found = PINNED.match(line)
            if found:
                shas.setdefault(found.group(1), set()).add(found.group(2))
    assert all(len(v) == 1 for v in shas.values()), shas
