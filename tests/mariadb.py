"""A private MariaDB server for tests that stop, pause or kill their database, so the
machine's shared server (127.0.0.1:3306, which CI needs) is never touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pymysql

from tests.helpers import UNIT, free_port, unavailable


def _binary(*names: str) -> str | None:
    for name in names:
        for folder in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            path = os.path.join(folder, name)
            if os.access(path, os.X_OK):
                return path
        found = shutil.which(name)
        if found:
            return found
    return None


class PrivateMariaDB:
    def __init__(self, base: Path, server_args: tuple[str, ...] = ()) -> None:
        self.base = base
        # Extra mariadbd options (e.g. --innodb-force-primary-key=1 to act like managed MySQL).
        self.server_args = server_args
        self.datadir = base / "data"
        self.socket = base / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "mysqld.log"

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/ferry"

    def url_for(self, user: str, password: str) -> str:
        return f"mysql://{user}:{password}@127.0.0.1:{self.port}/ferry"

    def install(self) -> None:
        install = _binary("mariadb-install-db", "mysql_install_db")
        if install is None:
            raise RuntimeError("mariadb-install-db not found")
        self.datadir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [install, f"--datadir={self.datadir}", "--user=root", "--auth-root-authentication-method=normal",
             "--skip-test-db", "--no-defaults"],
            check=True, capture_output=True, timeout=UNIT * 24,
        )  # fmt: skip

    def start(self) -> None:
        server = _binary("mariadbd", "mysqld")
        if server is None:
            raise RuntimeError("mariadbd not found")
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", "--user=root",
             f"--pid-file={self.base / 'mysqld.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=64M",
             "--innodb-log-file-size=48M", "--max-connections=50", "--skip-name-resolve",
             *self.server_args],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        self.wait_ready()

    def connect(self, db: str | None = "ferry") -> pymysql.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=db,
            connect_timeout=2,
            autocommit=True,
        )

    def wait_ready(self, timeout: float = UNIT * 6) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self.log.read_text()[-2000:]}")
            try:
                conn = self.connect(None)
                with conn.cursor() as cur:
                    cur.execute("CREATE DATABASE IF NOT EXISTS ferry")
                conn.close()
                return
            except pymysql.MySQLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(UNIT * 2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(UNIT * 4)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(UNIT)


def require_mariadb(base: Path, *server_args: str) -> PrivateMariaDB:
    """Start a private server; under CI a missing MariaDB fails the test, it never skips."""

    db = PrivateMariaDB(base, server_args)
    try:
        db.install()
        db.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        db.stop()
        unavailable(f"a private MariaDB: {exc}")
    return db
