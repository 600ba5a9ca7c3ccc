"""Nothing reaches another node before its owner's fdatasync, and nothing the owner failed
to write reaches any node; NATS going away and coming back under load (a private
nats-server) converges with no gap (docs/cluster.md, the failure table)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cluster.slots import SlotMap
from tests.cluster.support import Cluster, PrivateNats, require_nats
from tests.helpers import UNIT, Client
from tests.wal.faults import REPO

# A sitecustomize for the owner: fdatasync waits while HOLD exists, fails (EIO) once FAIL does.
_SITE = '''"""Test-only (tests/cluster/test_outages.py): hold or fail os.fdatasync on demand."""
import errno as _errno
import os as _os
import time as _time

_real = _os.fdatasync


def _fdatasync(fd):
    while _os.path.exists({hold!r}):
        _time.sleep(0.005)
    if _os.path.exists({fail!r}):
        raise OSError(_errno.EIO, _os.strerror(_errno.EIO))
    return _real(fd)


_os.fdatasync = _fdatasync
'''


# For the owner: the process dies right after an fdatasync once DIE exists (durable, and
# nobody was answered).
_DIE_AFTER_SYNC = """\"\"\"Test-only (tests/cluster/test_outages.py): die right after an fdatasync.\"\"\"
import os as _os

_real = _os.fdatasync


def _fdatasync(fd):
    _real(fd)
    if _os.path.exists({die!r}):
        _os._exit(9)


_os.fdatasync = _fdatasync
"""


def _site_env(site: Path, text: str) -> dict[str, str]:
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(text)
    paths = [str(site), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _owned_by(slots: SlotMap, node: str) -> str:
    return next(f"dur.{i}" for i in range(10_000) if slots.owner_of(f"dur.{i}") == node)


async def test_no_remote_delivery_before_the_owners_fsync_nor_of_a_failed_write(
    tmp_path: Path,
) -> None:
    require_nats()
    hold, fail = tmp_path / "hold", tmp_path / "fail"
    faults = _site_env(tmp_path / "site", _SITE.format(hold=str(hold), fail=str(fail)))
    cluster = Cluster(tmp_path)
    owner = cluster.ids[0]
    for node in cluster.ids:
        cluster.start(node, **(faults if node == owner else {}))
    try:
        for node in cluster.ids:
            cluster.wait_ready(node)
        channel = _owned_by(SlotMap(cluster.ids), owner)
        watchers = [await Client.connect(cluster.url(node)) for node in cluster.ids[1:]]
        for watcher in watchers:
            await watcher.sub(channel)
        publisher = await Client.connect(cluster.url(cluster.ids[1]))  # forwarded

        hold.touch()  # the owner's next fdatasync waits
        await publisher.pub(channel, "held", msg_id="1")
        for watcher in (*watchers, publisher):
            await watcher.assert_silent(0.5)  # not durable: not acked, delivered nowhere
        hold.unlink()
        assert (await publisher.expect("ack"))["seq"] == 1
        for watcher in watchers:
            frame = await watcher.expect("msg")
            assert frame["seq"] == 1 and frame["data"] == "held"

        fail.touch()  # the owner's next fdatasync fails: that record is nobody's
        await publisher.pub(channel, "lost", msg_id="2")
        error = await publisher.expect("error")
        assert error["code"] == "unavailable" and error["id"] == "2"
        for watcher in watchers:
            await watcher.assert_silent(0.5)
        for client in (*watchers, publisher):
            await client.close()
    finally:
        cluster.stop_all()


async def test_nats_down_local_channels_keep_working_and_all_converges_after(
    tmp_path: Path,
) -> None:
    nats = PrivateNats(tmp_path).start()
    cluster = Cluster(tmp_path, n=2, nats_url=nats.url)
    try:
        cluster.start_all()
        owner, other = cluster.ids
        channel = _owned_by(SlotMap(cluster.ids), owner)
        watcher = await Client.connect(cluster.url(other))
        await watcher.sub(channel)
        local = await Client.connect(cluster.url(owner))
        remote = await Client.connect(cluster.url(other))
        seqs: list[int] = []

        async def publish_locally(n: int) -> None:
            for _ in range(n):
                await local.pub(channel, len(seqs))
                seqs.append((await local.expect("ack"))["seq"])

        async def received(upto: int) -> list[int]:
            got: list[int] = []
            while not got or got[-1] < upto:
                got.append((await watcher.expect("msg", UNIT * 2))["seq"])
            return got

        await publish_locally(20)
        assert await received(20) == list(range(1, 21))

        nats.stop()
        await publish_locally(20)  # the owner's own channel: acked as ever
        assert seqs == list(range(1, 41))
        await remote.pub(channel, "through a dead NATS", msg_id="r")
        error = await remote.expect("error", UNIT * 2)  # the forward times out
        assert error["code"] == "unavailable"

        nats.start()  # the same port: both nodes reconnect
        rest = await received(40)  # what the outage held back, in order, once
        assert rest == list(range(21, 41)), rest
        await publish_locally(5)

        async def forwarded() -> int | None:
            await remote.pub(channel, "after", msg_id="after")
            frame = await remote.recv(UNIT * 2)
            return int(frame["seq"]) if frame["op"] == "ack" else None

        deadline = time.monotonic() + UNIT * 2
        while (last := await forwarded()) is None:  # the other node may reconnect later
            assert time.monotonic() < deadline, "forwarding never came back"
        # (the request sent while NATS was down may yet have reached the owner when it came
        # back: "outcome unknown" means just that; it is then one more message in the stream)
        head = max(last, seqs[-1])
        assert await received(head) == list(range(41, head + 1))
        for client in (watcher, local, remote):
            await client.close()
    finally:
        cluster.stop_all()
        nats.stop()


async def test_outcome_unknown_then_a_retry_with_the_same_mid_gets_the_original_seq(
    tmp_path: Path,
) -> None:
    """The owner dies after the fdatasync, before it answers: the forward times out
    (`unavailable`, outcome unknown); after the restart the retry is a duplicate."""
    require_nats()
    die = tmp_path / "die"
    faults = _site_env(tmp_path / "site", _DIE_AFTER_SYNC.format(die=str(die)))
    cluster = Cluster(tmp_path, n=2)
    owner, ingress = cluster.ids
    try:
        cluster.start(owner, **faults)
        cluster.start(ingress)
        for node in cluster.ids:
            cluster.wait_ready(node)
        channel = _owned_by(SlotMap(cluster.ids), owner)
        client = await Client.connect(cluster.url(ingress))
        await client.send({"op": "pub", "ch": channel, "data": "first", "mid": "m1", "id": 1})
        assert (await client.expect("ack"))["seq"] == 1
        die.touch()
        await client.send({"op": "pub", "ch": channel, "data": "once", "mid": "m2", "id": 2})
        error = await client.expect("error", UNIT * 2)
        assert error["code"] == "unavailable" and error["id"] == 2
        assert "may have been stored; retry with the same mid" in error["reason"]
        assert cluster.nodes[owner].wait() == 9  # it died after making it durable
        die.unlink()
        cluster.start(owner, **faults)
        cluster.wait_ready(owner)
        await client.send({"op": "pub", "ch": channel, "data": "once", "mid": "m2", "id": 3})
        retry = await client.expect("ack", UNIT * 2)
        assert retry["seq"] == 2 and retry.get("dup") is True
        reader = await Client.connect(cluster.url(owner))
        subscribed = await reader.sub(channel, since=0)
        assert subscribed["seq"] == 2  # one copy
        assert [(await reader.expect("msg"))["data"] for _ in range(2)] == ["first", "once"]
        for c in (client, reader):
            await c.close()
    finally:
        cluster.stop_all()
