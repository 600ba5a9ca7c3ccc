"""`ferry wal inspect|verify|dump|repair` on real directories."""

from __future__ import annotations

import base64
import itertools
import json
import os
from pathlib import Path

import msgspec
import pytest

from tests.wal.conftest import LogFactory, fill, message, segment_paths, spans
from wal import ConnectionEvent
from wal.tool import EXIT_CORRUPT, EXIT_OK, EXIT_TORN_TAIL, EXIT_USAGE, main

Capture = pytest.CaptureFixture[str]


async def _log(logs: LogFactory, path: Path, count: int = 120) -> None:
    log, _, handlers = await logs.open(path, segment_bytes=4096)
    await fill(log, handlers, count, per_tick=10, wait=True)
    await log.close()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


async def test_inspect_lists_segments(logs: LogFactory, tmp_path: Path, capsys: Capture) -> None:
    await _log(logs, tmp_path)
    assert main(["inspect", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "node 'node-a'" in out and "120 records" in out and "LSN 1..120" in out
    assert f"heads store: {tmp_path / 'heads.db'}, as of LSN 120, 3 channels" in out
    for path in segment_paths(tmp_path):
        assert path.name in out
    assert main(["inspect", "--json", str(tmp_path)]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    segs = doc["segments"]
    assert sum(s["records"] for s in segs) == 120
    assert segs[0]["first_lsn"] == 1 and segs[-1]["last_lsn"] == 120
    assert all(s["status"] == "ok" for s in segs)
    assert all((s["version"], s["channels_in_header"]) == (2, 0) for s in segs)
    assert doc["heads_store"] == {
        "path": str(tmp_path / "heads.db"),
        "as_of": 120,
        "channels": 3,
    }
    assert doc["heads_store_error"] is None
    for a, b in itertools.pairwise(segs):
        assert b["first_lsn"] == a["last_lsn"] + 1
    assert [s["bytes"] for s in segs] == [p.stat().st_size for p in segment_paths(tmp_path)]


async def test_verify_clean(logs: LogFactory, tmp_path: Path, capsys: Capture) -> None:
    await _log(logs, tmp_path)
    assert main(["verify", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    last = out.splitlines()[-1]
    assert last.startswith("ok: ") and "120 records" in last and "note" not in out
    assert "heads store: " in out and "as of LSN 120, 3 channels" in out


async def test_verify_names_file_and_offset(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    await _log(logs, tmp_path)
    middle = segment_paths(tmp_path)[1]
    victim = spans(middle)[2]
    _flip(middle, victim.offset + 20)
    assert main(["verify", str(tmp_path)]) == EXIT_CORRUPT
    out = capsys.readouterr().out
    assert f"DAMAGE {middle} offset {victim.offset}: checksum mismatch" in out
    assert "startup will refuse" in out and "ferry wal repair" in out


async def test_verify_torn_tail(logs: LogFactory, tmp_path: Path, capsys: Capture) -> None:
    await _log(logs, tmp_path)
    last = segment_paths(tmp_path)[-1]
    os.truncate(last, last.stat().st_size - 5)
    assert main(["verify", str(tmp_path)]) == EXIT_TORN_TAIL
    out = capsys.readouterr().out
    assert f"DAMAGE {last}" in out and "torn tail" in out and "truncates" in out


async def test_dump_renders_json_and_base64(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    log, _, handlers = await logs.open(tmp_path)
    log.append(message("room.1", 1, b'{"text":"hi","n":[1,2.5,null]}', client_msg_id="c-1"))
    packed = msgspec.msgpack.encode({"bin": b"\x00\xff"})
    log.append(message("room.2", 1, packed, encoding=1, client_msg_id=None))
    log.append_event(ConnectionEvent("connect", "bob", "127.0.0.1:1", ts_ms=5, conn_id="k"))
    log.append(message("room.1", 2, b"not json", client_msg_id="c-2"))
    await handlers.until(lambda: handlers.durable_lsn == 4)
    await log.close()

    assert main(["dump", str(tmp_path)]) == EXIT_OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["lsn"] for d in lines] == [1, 2, 3, 4]
    first, second, event, broken = lines
    assert first["type"] == "message" and first["ch"] == "room.1" and first["seq"] == 1
    assert first["data"] == {"text": "hi", "n": [1, 2.5, None]} and first["id"] == "c-1"
    assert first["encoding"] == "json" and first["from"] == "alice"
    assert second["encoding"] == "msgpack" and second["id"] is None
    assert base64.b64decode(second["data"]) == packed
    assert event == {
        "lsn": 3,
        "type": "event",
        "kind": "connect",
        "user": "bob",
        "remote": "127.0.0.1:1",
        "close_code": None,
        "duration_ms": None,
        "ts": 5,
    }
    assert broken["base64"] is True and base64.b64decode(broken["data"]) == b"not json"

    assert main(["dump", str(tmp_path), "--channel", "room.1", "--from-lsn", "2"]) == EXIT_OK
    only = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["lsn"] for d in only] == [4]
    assert main(["dump", str(tmp_path), "--from-lsn", "2", "--to-lsn", "3"]) == EXIT_OK
    assert [json.loads(x)["lsn"] for x in capsys.readouterr().out.splitlines()] == [2, 3]


async def test_dump_stops_at_corruption(logs: LogFactory, tmp_path: Path, capsys: Capture) -> None:
    await _log(logs, tmp_path)
    middle = segment_paths(tmp_path)[1]
    victim = spans(middle)[0]
    _flip(middle, victim.offset + 20)
    assert main(["dump", str(tmp_path)]) == EXIT_CORRUPT
    captured = capsys.readouterr()
    dumped = [json.loads(line)["lsn"] for line in captured.out.splitlines()]
    assert dumped == list(range(1, len(spans(segment_paths(tmp_path)[0])) + 1))
    assert str(middle) in captured.err and f"offset {victim.offset}" in captured.err


async def test_repair_clean_log_does_nothing(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    await _log(logs, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["repair", str(tmp_path)]) == EXIT_OK
    assert "nothing to repair" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_repair_bad_header_drops_the_segment(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    await _log(logs, tmp_path)
    segments = segment_paths(tmp_path)
    _flip(segments[2], 4)  # magic
    assert main(["repair", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "not a ferry WAL segment" in out
    assert all(f"dropped {p}" in out for p in segments[2:])
    assert segment_paths(tmp_path) == segments[:2]
    assert main(["verify", str(tmp_path)]) == EXIT_OK
    log, state, handlers = await logs.open(tmp_path, segment_bytes=4096)
    assert state.next_lsn == sum(len(spans(p)) for p in segments[:2]) + 1
    await fill(log, handlers, 5, heads=dict(state.heads))


def test_usage_and_missing_directory(tmp_path: Path, capsys: Capture) -> None:
    assert main([]) == EXIT_USAGE
    assert main(["frobnicate", str(tmp_path)]) == EXIT_USAGE
    assert main(["verify", str(tmp_path / "nope")]) == EXIT_CORRUPT
    assert "no such directory" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == EXIT_OK  # an empty directory is fine
    assert main(["dump", str(tmp_path)]) == EXIT_OK
