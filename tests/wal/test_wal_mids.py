"""What the WAL keeps for idempotent publish and epochs: a record's `mid` survives a
reopen, recovery hands back the newest mids (bounded), retention keeps the segments
written within the dedupe window, and the epoch is made once per WAL directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from common.durability import HistoryLimits
from tests.wal.conftest import LogFactory, message, segment_paths
from wal.reader import iter_records
from wal.record import MESSAGE, decode_message


async def test_a_records_mid_comes_back_after_a_reopen(logs: LogFactory, tmp_path: Path) -> None:
    log, state, handlers = await logs.open(tmp_path)
    first_epoch = state.epoch
    assert len(first_epoch) == 16 and int(first_epoch, 16) >= 0
    plain = message("room", 1)
    with_mid = message("room", 2, sender="bob", ts_ms=1_800_000_000_123)
    with_mid.mid = "01JEX3-retry-me"
    log.append(plain)
    log.append(with_mid)
    await handlers.until_durable(with_mid.lsn)
    await log.close()
    bodies = [decode_message(r.payload) for r in iter_records(str(tmp_path)) if r.type == MESSAGE]
    assert [b.mid for b in bodies] == [None, "01JEX3-retry-me"]
    assert bodies[0].client_msg_id == "c-room-1"  # the correlation id stays where it was
    _, state, _ = await logs.open(tmp_path)
    assert state.mids == [("bob", "room", "01JEX3-retry-me", 2, 1_800_000_000_123)]
    assert state.epoch == first_epoch  # same directory, same incarnation
    assert state.history["room"][1].mid == "01JEX3-retry-me"


async def test_recovery_hands_back_only_the_newest_mids(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path)
    for seq in range(1, 21):
        entry = message("room", seq)
        entry.mid = f"m-{seq}"
        log.append(entry)
    await handlers.until_durable(20)
    await log.close()
    _, state, _ = await logs.open(tmp_path, limits=HistoryLimits(size=10, mids=5))
    assert [m[2] for m in state.mids] == [f"m-{seq}" for seq in range(16, 21)]


async def test_a_new_wal_directory_is_a_new_epoch(logs: LogFactory, tmp_path: Path) -> None:
    log, state, _ = await logs.open(tmp_path / "a")
    await log.close()
    _, other, _ = await logs.open(tmp_path / "b")
    assert other.epoch != state.epoch
    shutil.rmtree(tmp_path / "a")  # wiped: the seqs start over, so must the epoch
    _, again, _ = await logs.open(tmp_path / "a")
    assert again.epoch not in (state.epoch, other.epoch)


async def test_retention_keeps_the_segments_of_the_dedupe_window(
    logs: LogFactory, tmp_path: Path
) -> None:
    kw = {"history_size": 0, "segment_bytes": 4096}
    log, _, handlers = await logs.open(tmp_path / "kept", keep_recent_s=3600.0, **kw)
    plain, _, plain_handlers = await logs.open(tmp_path / "plain", **kw)
    for wal, h in ((log, handlers), (plain, plain_handlers)):
        for seq in range(1, 301):
            wal.append(message("room", seq))
            if seq % 10 == 0:
                await h.until_durable(seq)
        await wal.flush_heads()
        wal.set_checkpoint(10**9)  # the database has everything
        await wal.wait_deletions()
    assert len(segment_paths(tmp_path / "plain")) == 1  # all but the active one went
    kept = segment_paths(tmp_path / "kept")
    assert len(kept) > 3  # written within the window: a restart reads their mids back
    await log.close()
    reopened, _, _ = await logs.open(tmp_path / "kept", keep_recent_s=3600.0, **kw)
    reopened.set_checkpoint(10**9)
    await reopened.wait_deletions()
    assert segment_paths(tmp_path / "kept") == kept  # their mtime says recent: still kept
