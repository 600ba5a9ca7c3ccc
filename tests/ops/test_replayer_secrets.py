"""The database password never shows on the replayer child's command line (`ps` shows every
process's arguments to every user): `ferry serve` hands the URL over the child's stdin pipe,
and keeps its secrets out of the child's environment too. The child still connects (here
to a private MariaDB whose user has a password) and replays a published message."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.helpers import UNIT, Client, ServeProcess, http_get, wait_for_sync
from tests.mariadb import require_mariadb

PASSWORD = "Pw-not-for-ps_7f3a9c"
JWT_SECRET = "jwt-secret-not-for-ps-0123456789abcdef"
ADMIN_TOKEN = "admin-token-not-for-ps-0123456789abcd"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _replayer_of(pid: int) -> tuple[int, list[str]]:
    for child in _children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "wal.replay.child" in args:
            return child, args
    raise AssertionError(f"no replayer child of {pid} yet")


async def test_the_password_is_not_on_the_replayers_command_line(tmp_path: Path) -> None:
    db = require_mariadb(tmp_path / "db")
    try:
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER 'relay'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute("GRANT ALL ON ferry.* TO 'relay'@'%'")
        conn.close()
        server = ServeProcess(
            {
                "FERRY_WAL_DIR": str(tmp_path / "wal"),
                "FERRY_DB_URL": db.url_for("relay", PASSWORD),
                "FERRY_AUTH": "none",
                "FERRY_JWT_SECRET": JWT_SECRET,
                "FERRY_ADMIN_TOKEN": ADMIN_TOKEN,
            }
        ).start(tmp_path / "serve.log")
        try:
            server.wait_healthy()
            assert server.proc is not None
            pid = server.proc.pid
            found: list[tuple[int, list[str]]] = []

            def replayer_started() -> bool:
                try:
                    found.append(_replayer_of(pid))
                except AssertionError:
                    return False
                return True

            wait_for_sync(replayer_started, UNIT * 2, "the replayer child")
            child, argv = found[-1]
            assert PASSWORD not in " ".join(argv), argv
            assert "--db-from-stdin" in argv
            environ = Path(f"/proc/{child}/environ").read_bytes()
            for secret in (PASSWORD, JWT_SECRET, ADMIN_TOKEN):
                assert secret.encode() not in environ, f"{secret} in the child's environment"

            # ...and it did get the URL: it is connected and replays what is published.
            def db_up() -> bool:
                status, body = http_get(server.http + "/metrics", timeout=1)
                return status == 200 and b"\nferry_db_up 1" in body

            wait_for_sync(db_up, UNIT * 4, "ferry_db_up 1")
            client = await Client.connect(server.url)
            await client.send({"op": "pub", "ch": "room.1", "data": {"x": 1}, "id": "p-1"})
            await client.expect("ack")
            await client.ws.close()

            def replayed() -> bool:
                check = db.connect()
                with check.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM ferry_messages WHERE channel = 'room.1'")
                    row = cur.fetchone()
                check.close()
                return row == (1,)

            wait_for_sync(replayed, UNIT * 2, "the message in MariaDB")
            assert _replayer_of(pid)[0] == child  # the same child all along
        finally:
            server.kill()
            deadline = time.monotonic() + UNIT
            while server.proc is not None and time.monotonic() < deadline:
                if not _children(server.proc.pid):
                    break
                time.sleep(0.05)
    finally:
        db.stop()
