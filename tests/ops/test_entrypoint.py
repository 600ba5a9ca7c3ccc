"""The container's command, run for real outside Docker.

The `ferry` image runs ENTRYPOINT + CMD from the Dockerfile (scripts/entrypoint.sh, copied
to /usr/local/bin/ferry-entrypoint, then `ferry serve`) with the image's ENV, overlaid by the
compose file's `environment` as docker compose resolves it with an env file. With
.env.example itself (its public placeholder secrets) the entrypoint must refuse to start and
say what to do; with a .env from ops/tools/new-env.sh it must serve. The environment is
rewritten only where the container differs from this machine: the database is the local
MariaDB (127.0.0.1:3306, root, a database of this test's own) instead of the `mysql`
service, the WAL and the dashboard live in a temp dir instead of /data and /opt, and the port
is a free one. Then the image's and compose's own healthcheck commands must pass, and SIGTERM
must end it cleanly. The `mysql` service's entrypoint refuses the placeholders too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pymysql
import pytest

from tests.helpers import ROOT, UNIT
from tests.ops.support import (
    BUILD_COMMIT_ENV,
    ENV_EXAMPLE,
    compose_config,
    parse_dockerfile,
    serve_accepts_build_commit,
)

# Not `test`: opening the sink upgrades the schema (an older checkout's tests share `test`).
TEST_DB = "ferry_ops_entrypoint"
TEST_DB_URL = f"mysql://root@127.0.0.1:3306/{TEST_DB}"
CONTAINER_PATHS = ("/data", "/opt/ferry")
# Where the Dockerfile puts scripts/entrypoint.sh.
ENTRYPOINT_IN_IMAGE = "/usr/local/bin/ferry-entrypoint"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=UNIT / 5) as r:
            status: int = r.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _new_env(tmp_path: Path) -> Path:
    """A .env as the README says to make one: ops/tools/new-env.sh."""
    env_file = tmp_path / "generated.env"
    done = subprocess.run(
        [str(ROOT / "ops" / "tools" / "new-env.sh"), str(env_file)],
        capture_output=True, text=True, timeout=UNIT * 2,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    values = [line for line in env_file.read_text().splitlines() if not line.startswith("#")]
    assert values and not [line for line in values if "change-me" in line]
    assert env_file.stat().st_mode & 0o077 == 0, "the .env holds secrets: mode 0600"
    return env_file


def _container_command_and_env(
    tmp_path: Path, port: int, env_file: Path
) -> tuple[list[str], dict[str, str]]:
    (ferry,) = [stage for stage in parse_dockerfile() if stage.name == "ferry"]
    entrypoint, cmd = ferry.last("ENTRYPOINT"), ferry.last("CMD")
    assert entrypoint and cmd
    argv = (entrypoint.exec_form() or []) + (cmd.exec_form() or [])
    copies = [c.value.split() for c in ferry.all("COPY")]
    assert ["scripts/entrypoint.sh", ENTRYPOINT_IN_IMAGE] in copies, copies
    assert argv[0] == Path(ENTRYPOINT_IN_IMAGE).name
    argv[0] = str(ROOT / "scripts" / "entrypoint.sh")

    image_env = {k: v for k, v in ferry.env().items() if k.startswith("FERRY_")}
    assert image_env[BUILD_COMMIT_ENV] == "${FERRY_BUILD_COMMIT}"  # from the build arg
    image_env[BUILD_COMMIT_ENV] = "f" * 40
    if not serve_accepts_build_commit():
        # core/config.py does not know it yet (the /healthz side of issue 11 is core's).
        del image_env[BUILD_COMMIT_ENV]
    compose_env = compose_config(env_file)["services"]["ferry"]["environment"]
    env = {**image_env, **{k: str(v) for k, v in compose_env.items()}}

    dashboard = tmp_path / "dashboard"
    dashboard.mkdir()
    (dashboard / "index.html").write_text("<!doctype html><title>ferry</title>")
    env.update(
        FERRY_DB_URL=TEST_DB_URL,
        FERRY_WAL_DIR=str(tmp_path / "data" / "wal"),
        FERRY_HOST="127.0.0.1",
        FERRY_PORT=str(port),
        FERRY_DASHBOARD_DIR=str(dashboard),
        # Its own node id: the `test` database is shared with other tests.
        FERRY_NODE_ID=f"ops-entrypoint-{os.getpid()}",
        FERRY_WEBHOOK_URL="",
    )
    leftovers = {k: v for k, v in env.items() if v.startswith(CONTAINER_PATHS)}
    assert not leftovers, f"container-only paths not rewritten: {leftovers}"
    return argv, env


def _run_env(ferry_env: dict[str, str]) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "ferry").exists(), "ferry missing: pip install -e . (scripts/bootstrap.sh)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(ferry_env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_entrypoint_refuses_the_placeholder_secrets(tmp_path: Path) -> None:
    argv, ferry_env = _container_command_and_env(tmp_path, _free_port(), ENV_EXAMPLE)
    # The compose file's own URL (mysql://ferry:<MYSQL_PASSWORD>@mysql:3306/ferry).
    compose_env = compose_config(ENV_EXAMPLE)["services"]["ferry"]["environment"]
    ferry_env["FERRY_DB_URL"] = compose_env["FERRY_DB_URL"]
    done = subprocess.run(
        argv, env=_run_env(ferry_env), capture_output=True, text=True, timeout=UNIT * 2
    )
    assert done.returncode == 78, (done.stdout, done.stderr)
    for name in ("FERRY_JWT_SECRET", "FERRY_ADMIN_TOKEN", "MYSQL_PASSWORD"):
        assert f"{name} is still the placeholder" in done.stderr, done.stderr
    assert "ops/tools/new-env.sh" in done.stderr
    assert not done.stdout  # ferry itself never ran


@pytest.mark.parametrize("bad", ["FERRY_JWT_SECRET", "FERRY_ADMIN_TOKEN"])
def test_one_placeholder_is_enough_to_refuse(tmp_path: Path, bad: str) -> None:
    argv, ferry_env = _container_command_and_env(tmp_path, _free_port(), _new_env(tmp_path))
    ferry_env[bad] = "change-me-" + "x" * 40
    done = subprocess.run(
        argv, env=_run_env(ferry_env), capture_output=True, text=True, timeout=UNIT * 2
    )
    assert done.returncode == 78 and f"{bad} is still the placeholder" in done.stderr
    assert done.stderr.count("is still the placeholder") == 1, done.stderr


@pytest.mark.parametrize("env_file", ["example", "generated"])
def test_the_mysql_service_refuses_the_placeholders_too(tmp_path: Path, env_file: str) -> None:
    path = ENV_EXAMPLE if env_file == "example" else _new_env(tmp_path)
    mysql = compose_config(path)["services"]["mysql"]
    # `config` keeps the file's `$$` escapes; the container gets a plain `$`.
    entrypoint = [part.replace("$$", "$") for part in mysql["entrypoint"]]
    command = mysql["command"]
    assert entrypoint[:2] == ["sh", "-c"]
    # The image's docker-entrypoint.sh, stood in for by one that records its arguments.
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    stub = stub_dir / "docker-entrypoint.sh"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_ARGS"\n')
    stub.chmod(0o755)
    env = {
        "PATH": f"{stub_dir}:/usr/bin:/bin",
        "STUB_ARGS": str(tmp_path / "args"),
        **{k: str(v) for k, v in mysql["environment"].items()},
    }
    done = subprocess.run(
        [*entrypoint, *command], env=env, capture_output=True, text=True, timeout=UNIT
    )
    if env_file == "example":
        assert done.returncode == 78, done
        assert "placeholder" in done.stderr and "ops/tools/new-env.sh" in done.stderr
        assert not (tmp_path / "args").exists()
    else:
        assert done.returncode == 0, done
        assert (tmp_path / "args").read_text().split() == command


def test_ferry_serve_runs_with_the_compose_environment(tmp_path: Path) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", connect_timeout=2)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {TEST_DB}")
    conn.close()
    port = _free_port()
    argv, ferry_env = _container_command_and_env(tmp_path, port, _new_env(tmp_path))
    assert argv[1:] == ["serve"]
    env = _run_env(ferry_env)
    (tmp_path / "data").mkdir(exist_ok=True)
    log_path = tmp_path / "ferry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=tmp_path / "data",  # the image's WORKDIR is /data
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def output() -> str:
        return log_path.read_text(errors="replace")[-8000:]

    try:
        # Up to 12 units for startup (WAL recovery, schema creation in MariaDB).
        deadline = time.monotonic() + 12 * UNIT
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"ferry serve exited {proc.returncode}:\n{output()}"
            status = _healthz(port)
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200, f"/healthz answered {status}:\n{output()}"

        # The image's HEALTHCHECK and the compose healthcheck, run as they are written.
        (ferry_stage,) = [s for s in parse_dockerfile() if s.name == "ferry"]
        healthcheck = ferry_stage.last("HEALTHCHECK")
        assert healthcheck is not None
        image_check = healthcheck.exec_form()
        compose_check = compose_config()["services"]["ferry"]["healthcheck"]["test"][1:]
        for check in (image_check, compose_check):
            assert check and check[0] == "python", check
            done = subprocess.run(
                [sys.executable, *check[1:]], env=env, capture_output=True, timeout=2 * UNIT
            )
            assert done.returncode == 0, (check, done.stderr, output())

        # `docker stop`: SIGTERM, then a graceful exit 0 within the shutdown timeout.
        proc.send_signal(signal.SIGTERM)
        timeout = float(ferry_env.get("FERRY_SHUTDOWN_TIMEOUT", "10")) + 2 * UNIT
        assert proc.wait(timeout=timeout) == 0, f"exit {proc.returncode} on SIGTERM:\n{output()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=UNIT)
