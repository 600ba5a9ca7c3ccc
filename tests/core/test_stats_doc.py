"""`$sys.stats`/`$sys.tail` are msgspec Structs (common/stats_doc.py): the dashboard's types are
generated from them, and the JSON on the wire is what it was when they were plain dicts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import msgspec

from common import stats_doc
from core.stats import StatsPublisher
from tests.helpers import StartRelay
from wal.log import WalLog
from wal.replay.replayer import DbState
from wal.replay.service import ReplayService

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "dashboard" / "src" / "stats.gen.ts"
PROTOCOL_TS = ROOT / "dashboard" / "src" / "protocol.ts"

# The `$sys.stats` keys, in wire order, as the dashboard and its e2e tests read them.
STATS_KEYS = [
    "node", "uptime_s", "ts_ms", "connections", "subscriptions", "channels", "history_bytes",
    "msgs_in_per_s", "deliveries_per_s", "bytes_in_per_s", "bytes_out_per_s", "ack_p50_ms",
    "ack_p99_ms", "slow_consumer_closes", "errors", "top_channels", "wal", "db", "stages",
    "services",
]  # fmt: skip
WAL_KEYS = [
    "writable", "failure", "sync", "head_lsn", "bytes", "segments", "fsync_p50_ms",
    "fsync_p99_ms", "records_per_fsync",
]  # fmt: skip
DB_REPLAYING_KEYS = [
    "state", "last_error", "url", "checkpoint_lsn", "lag_records", "lag_seconds", "rows_per_s",
]  # fmt: skip


def test_the_dashboard_types_are_generated_from_the_structs() -> None:
    """Regenerate with `python -m common.stats_doc > dashboard/src/stats.gen.ts`."""
    assert GENERATED.read_text() == stats_doc.typescript()


def test_the_dashboard_uses_the_generated_types_not_its_own() -> None:
    text = PROTOCOL_TS.read_text()
    assert 'import type * as Wire from "./stats.gen";' in text
    for name in ("Stats", "WalStats", "DbStats", "TopChannel", "TailEntry"):
        assert not re.search(rf"\binterface {name}\b", text), name
        assert re.search(rf"export type {name}\b.*Wire\.{name}\b", text), name


def test_the_generated_interfaces_list_every_field_and_literal() -> None:
    """The generator leaves nothing out: every Struct field, and every literal value."""
    text = GENERATED.read_text()
    for struct in (stats_doc.Stats, stats_doc.WalStats, stats_doc.DbStats, stats_doc.TopChannel):
        body = re.search(rf"export interface {struct.__name__} \{{(.*?)\}}", text, re.S)
        assert body is not None, struct.__name__
        names = re.findall(r"^\s+(\w+)\??:", body.group(1), re.M)
        assert names == list(struct.__struct_encode_fields__), struct.__name__
    assert re.search(r"\bfrom: string;", text)  # TailEntry.sender, renamed on the wire
    for state in get_args(stats_doc.DbState):
        assert f'"{state}"' in text


def test_db_states_are_the_replayers_and_off() -> None:
    assert set(get_args(stats_doc.DbState)) == {s.value for s in DbState} | {"off"}


def _wire(value: msgspec.Struct) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(msgspec.json.encode(value))
    return doc


async def test_a_live_snapshot_keeps_the_wire_keys(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    assert relay.server.stats is not None
    doc = _wire(
        msgspec.structs.replace(relay.server.stats.snapshot(), **relay.server._extra_stats())
    )
    assert list(doc) == STATS_KEYS
    assert doc["services"]["stats"]["failures"] == 0
    assert list(doc["wal"]) == WAL_KEYS
    assert doc["db"] == {"state": "off", "last_error": None, "url": None}  # no replayer
    assert doc["node"] == "test-node" and doc["wal"]["sync"] == relay.server.config.wal_sync


async def test_the_replayers_section_replaces_db(start_relay: StartRelay, tmp_path: Path) -> None:
    relay = await start_relay()
    wal = WalLog(tmp_path / "wal", node_id="n1")  # not opened: the service is not started
    service = ReplayService(wal, str(tmp_path / "wal"), "mysql://u:secret@db:3306/ferry", "n1")
    doc = _wire(StatsPublisher(relay.hub, service.stats_section).snapshot())
    assert list(doc) == STATS_KEYS
    assert list(doc["db"]) == DB_REPLAYING_KEYS
    assert doc["db"]["state"] == "starting"
    assert "secret" not in doc["db"]["url"]


def test_tail_entries_send_the_sender_as_from() -> None:
    entry = stats_doc.TailEntry(
        ch="a", seq=1, sender="u1", ts=5, size=2, preview="{}", lsn=9, durable_ms=0.5, delivered=3
    )
    assert _wire(entry) == {
        "ch": "a", "seq": 1, "from": "u1", "ts": 5, "size": 2, "preview": "{}",
        "lsn": 9, "durable_ms": 0.5, "delivered": 3,
    }  # fmt: skip
