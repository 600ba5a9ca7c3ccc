"""The container's command, run for real outside Docker.

The `ferry` image runs ENTRYPOINT + CMD from the Dockerfile with the image's ENV, overlaid
by the compose file's `environment` (as docker compose resolves it with .env.example).
Here the same command runs with the same environment, rewritten only where the container
differs from this machine: the database is the local MariaDB (127.0.0.1:3306, root, database
`test`) instead of the `mysql` service, the WAL and the dashboard live in a temp dir instead
of /data and /opt, and the port is a free one. Then the image's and compose's own
healthcheck commands must pass, and SIGTERM must end it cleanly (DESIGN §6).
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

from tests.ops.support import UNIT, compose_config, parse_dockerfile

TEST_DB_URL = "mysql://root@127.0.0.1:3306/test"
CONTAINER_PATHS = ("/data", "/opt/ferry")


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


def _container_command_and_env(tmp_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    (ferry,) = [stage for stage in parse_dockerfile() if stage.name == "ferry"]
    entrypoint, cmd = ferry.last("ENTRYPOINT"), ferry.last("CMD")
    assert entrypoint and cmd
    argv = (entrypoint.exec_form() or []) + (cmd.exec_form() or [])

    image_env = {k: v for k, v in ferry.env().items() if k.startswith("FERRY_")}
    compose_env = compose_config()["services"]["ferry"]["environment"]
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


def test_ferry_serve_runs_with_the_compose_environment(tmp_path: Path) -> None:
    port = _free_port()
    argv, ferry_env = _container_command_and_env(tmp_path, port)
    assert argv == ["ferry", "serve"]
    bin_dir = Path(sys.executable).parent
    executable = bin_dir / argv[0]
    assert executable.exists(), f"{executable} missing: pip install -e . (scripts/bootstrap.sh)"

    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(ferry_env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    (tmp_path / "data").mkdir(exist_ok=True)
    log_path = tmp_path / "ferry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(executable), *argv[1:]],
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
