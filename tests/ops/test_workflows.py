"""GitHub Actions workflows: actionlint- and checkov-clean, and doing what issue 7 asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.support import ROOT, checkov, explain, failed_checks, ops_tool, run

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
    (job,) = ci["jobs"].values()
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


def test_deploy_pushes_the_image_then_applies_on_push_to_main() -> None:
    deploy = _load("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"]
    # Never two deploys at once, and a running one is not cancelled (ops/README.md).
    assert deploy["concurrency"]["cancel-in-progress"] is False
    jobs = deploy["jobs"]
    images, apply = jobs["images"], jobs["deploy"]
    assert images["permissions"]["packages"] == "write"
    pushes = [s for s in _steps(images) if str(s.get("uses", "")).startswith("docker/build-push")]
    assert {s["with"]["target"] for s in pushes} == {"ferry", "dashboard"}
    assert all(s["with"]["push"] is True for s in pushes)
    assert apply["needs"] == "images"
    runs = [str(s.get("run", "")) for s in _steps(apply)]
    assert any("terraform apply" in r for r in runs)
    assert any("terraform init" in r for r in runs)
    # Secrets reach Terraform as TF_VAR_* from repository secrets, nothing inline.
    env = apply["env"]
    for key in ("TF_VAR_do_token", "TF_VAR_cloudflare_api_token", "TF_VAR_vercel_api_token"):
        assert env[key].startswith("${{ secrets."), key


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_actions_are_pinned_to_a_version(name: str) -> None:
    for job in _load(name)["jobs"].values():
        for step in _steps(job):
            if "uses" in step:
                assert "@" in step["uses"] and not step["uses"].endswith(("@main", "@master"))
