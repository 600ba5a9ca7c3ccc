"""The load benchmark's harness, proven once per scenario at a tiny size.

Only that it works: servers start and stop, workers connect and report, numbers are
sane (> 0), the JSON has its keys. No timing is asserted: the machine is shared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import cli, targets
from bench.loadgen import PubBuilder, client_frame, send_stamp
from bench.profiling import top_functions
from bench.replay import replayer_available
from bench.report import RESULT_KEYS, Result

TINY = ["--seconds", "1", "--warmup", "0.3"]


def _run(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / f"{argv[0]}.json"
    code = cli.main([*argv, *TINY, "--json", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


def _check_run(doc: dict[str, Any], scenario: str) -> None:
    for key in RESULT_KEYS:
        assert key in doc, key
    assert doc["kind"] == "run" and doc["scenario"] == scenario
    assert doc["throughput"] > 0
    assert doc["counts"]["connect_failures"] == 0
    assert doc["counts"]["errors"] == 0
    assert doc["server"]["cpu_s"] is not None and doc["server"]["peak_rss_kb"] > 0
    assert doc["machine"]["nproc"] >= 1 and len(doc["load_avg"]) == 3


def test_fanout_two_workers(tmp_path: Path) -> None:
    code, doc = _run(tmp_path, "fanout", "-S", "5", "-W", "8", "--workers", "2")
    assert code == 0
    _check_run(doc, "fanout")
    assert doc["counts"]["delivered"] > 0 and doc["counts"]["acked"] > 0
    assert doc["latency"]["samples"] > 0 and doc["latency"]["p50_ms"] > 0
    assert doc["ack_latency"]["what"] == "pub->ack"
    assert doc["server"]["cpu_us_per_unit"] > 0
    assert doc["client"]["workers"] == 2
    assert {g["goal"][:4] for g in doc["goals"]} == {">= 1", "<= 0"}


def test_rooms(tmp_path: Path) -> None:
    code, doc = _run(tmp_path, "rooms", "-R", "2", "-M", "3", "--rate", "200", "--workers", "1")
    assert code == 0
    _check_run(doc, "rooms")
    # every publish reaches the 3 members of its room
    assert doc["counts"]["delivered"] > doc["counts"]["acked"] > 0
    assert doc["latency"]["what"] == "publish->deliver" and doc["latency"]["samples"] > 0


def test_latency(tmp_path: Path) -> None:
    code, doc = _run(tmp_path, "latency", "-R", "2", "-S", "3", "--rate", "200", "--workers", "2")
    assert code == 0
    _check_run(doc, "latency")
    # every publish reaches the 3 subscribers of its room, each timed. The window closes
    # on both workers at once: a message acked just before may have its deliveries read by
    # the other worker just after, or the other way round (a few at 200/s, never hundreds).
    acked, delivered = doc["counts"]["acked"], doc["counts"]["delivered"]
    assert acked > 0 and abs(3 * acked - delivered) <= 3 * 5, (acked, delivered)
    assert doc["latency"]["samples"] == doc["counts"]["delivered"]
    assert {"p50_ms", "p99_ms", "p999_ms"} <= set(doc["latency"])
    assert len(doc["goals"]) == 3
    # ferry's own breakdown of the window, from its /metrics (bench/stages.py)
    stages = doc["stages"]
    assert {"queue", "fsync", "deliver", "flush"} <= set(stages), stages
    assert all(s["count"] > 0 and s["p99_ms"] >= s["p50_ms"] >= 0 for s in stages.values())


def test_compare_latency_with_uws(tmp_path: Path) -> None:
    """The uWebSockets.js peer (the npm package `uwebsockets`) speaks the same subset."""
    out = tmp_path / "compare.json"
    argv = ["compare", "latency", "-R", "2", "-S", "2", "--rate", "100", "--workers", "1", *TINY]
    code = cli.main([*argv, "--targets", "ferry,uws", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert [r["target"] for r in doc["runs"]] == ["ferry", "uws"]
    for run in doc["runs"]:
        _check_run(run, "latency")
        assert run["counts"]["delivered"] > 0
    assert doc["runs"][0]["stages"] and doc["runs"][1]["stages"] is None  # ferry's only


def test_connections(tmp_path: Path) -> None:
    code, doc = _run(tmp_path, "connections", "-N", "50", "--workers", "1")
    assert code == 0
    _check_run(doc, "connections")
    assert doc["counts"]["connected"] == 50
    assert doc["server"]["rss_kb_connected"] >= doc["server"]["rss_kb_before_connect"] > 0
    assert "rss_per_conn_kb" in doc["server"]
    assert doc["latency"]["what"] == "connect->welcome" and doc["latency"]["samples"] == 50


def test_ingest(tmp_path: Path) -> None:
    if not targets.wal_available():
        assert cli.main(["ingest", "-P", "2", *TINY]) == 2  # "needs the WAL"
        return
    code, doc = _run(tmp_path, "ingest", "-P", "2", "-W", "4", "--workers", "1")
    assert code == 0
    _check_run(doc, "ingest")
    assert doc["counts"]["acked"] > 0 and doc["counts"]["delivered"] == 0
    assert doc["ack_latency"]["samples"] > 0 and doc["settings"]["FERRY_DURABILITY"] == "wal"


@pytest.mark.parametrize("mode", ["ingest", "fanout"])
def test_cluster(tmp_path: Path, mode: str) -> None:
    """Two nodes on the machine's NATS: forwarded acks, deliveries on both nodes."""
    from tests.cluster.support import require_nats

    require_nats()
    code, doc = _run(tmp_path, "cluster", mode, "-P", "2", "-S", "4", "-W", "4")
    assert code == 0
    _check_run(doc, mode)
    assert set(doc["server"]["nodes"]) == {"c1", "c2"}
    assert all(cpu > 0 for cpu in doc["server"]["nodes"].values())  # both nodes worked
    assert doc["counts"]["acked"] > 0
    if mode == "fanout":
        assert doc["counts"]["delivered"] > 0


def test_replay(tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    code = cli.main(["replay", "-N", "2000", "--json", str(out)])
    if not replayer_available():
        assert code == 2 and not out.exists()
        return
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["scenario"] == "replay" and doc["counts"]["rows"] == 2000
    assert doc["server"]["exit_code"] == 0 and doc["throughput"] > 0


def test_compare_fanout_and_chart(tmp_path: Path) -> None:
    names = [targets.FERRY, targets.WEBSOCKETS]
    if shutil.which("node") and (targets.PEERS / "node_modules" / "ws").is_dir():
        names.insert(1, targets.NODE_WS)
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    argv = ["compare", "fanout", "-S", "3", "-W", "4", "--workers", "1", *TINY]
    code = cli.main([*argv, "--targets", ",".join(names), "--json", str(out), "--chart", str(png)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "compare" and [r["target"] for r in doc["runs"]] == names
    for run in doc["runs"]:
        _check_run(run, "fanout")
        assert run["counts"]["delivered"] > 0
    assert set(doc["ratios"]) == {f"ferry/{n}" for n in names[1:]}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the cheap parts, without a server ---------------------------------------------------


@pytest.mark.parametrize("size", [16, 128, 300, 70_000])
def test_pub_frames_have_the_asked_data_size(size: int) -> None:
    frame = PubBuilder("room.7", size).frame(123456789012345)
    n = frame[1] & 0x7F
    offset = {126: 4, 127: 10}.get(n, 2)
    assert frame[0] == 0x81 and frame[1] & 0x80  # final text frame, masked
    assert frame[offset : offset + 4] == b"\0\0\0\0"  # the zero key: payload as is
    doc = json.loads(frame[offset + 4 :])
    assert doc["op"] == "pub" and doc["ch"] == "room.7"
    assert doc["data"]["t"] == 123456789012345
    data = json.dumps(doc["data"], separators=(",", ":")).encode()
    assert len(data) == max(size, len(b'{"t":123456789012345,"p":""}'))


def test_send_stamp_in_compact_and_spaced_json() -> None:
    assert send_stamp(b'{"op":"msg","seq":3,"data":{"t":98765,"p":"xx"}}') == 98765
    assert send_stamp(b'{"op": "msg", "data": {"t": 42, "p": "x"}}') == 42
    assert send_stamp(b'{"op":"msg","data":1}') == -1


def test_client_frame_lengths() -> None:
    assert client_frame(b"x" * 125)[:2] == b"\x81\xfd"
    assert client_frame(b"x" * 126)[:4] == b"\x81\xfe\x00\x7e"
    assert client_frame(b"x" * 65536)[:2] == b"\x81\xff"


def test_top_functions_from_folded_stacks() -> None:
    main = "thread (7): MainThread;<module> (core/cli.py:87);run (core/server.py:10)"
    folded = (
        f"{main};flush (core/outbox.py:57) 50\n"
        f"{main};flush (core/outbox.py:60) 10\n"
        f"{main};on_durable (core/router.py:200) 20\n"
        "thread (9): ferry-wal-sync;_run (wal/writer.py:1) 20\n"
    )
    top = top_functions(folded)
    assert top["samples"] == 100
    assert top["top_own"][0] == {
        "function": "flush (core/outbox.py)",
        "own_pct": 60.0,
        "total_pct": 60.0,
    }
    assert top["threads"][0] == {"thread": "MainThread", "samples": 80, "pct": 80.0}
    loop = top["by_thread"]["MainThread"]
    assert loop[0]["function"] == "flush (core/outbox.py)" and loop[0]["own_pct"] == 75.0
    assert loop[1]["total_pct"] == 25.0  # on_durable, 20 of the loop's 80


def test_repeat_keeps_the_best_run_and_every_figure() -> None:
    def run(throughput: float, p99: float, others: float) -> Result:
        r = Result("fanout", "ferry", {"S": 100}, throughput, "deliveries/s")
        r.latency = {"what": "publish->deliver", "p99_ms": p99}
        r.noise = {"others_cores": others}
        return r

    best = cli._best([run(1e6, 9.0, 1.0), run(3e6, 20.0, 0.1), run(2e6, 5.0, 0.5)])
    assert best.throughput == 3e6  # fanout: the highest throughput
    assert [x["throughput"] for x in best.repeats] == [1e6, 3e6, 2e6]
    assert [x["others_cores"] for x in best.repeats] == [1.0, 0.1, 0.5]
    rooms = [run(1e5, 9.0, 0.0), run(1e5, 4.0, 0.0)]
    for r in rooms:
        r.scenario = "rooms"
    assert cli._best(rooms).latency == {"what": "publish->deliver", "p99_ms": 4.0}


@pytest.mark.parametrize("batch", ["0", "50"])
def test_http_single_and_batched(tmp_path: Path, batch: str) -> None:
    out = tmp_path / "http.json"
    argv = ["http", "--seconds", "1", "-C", "4", "--batch", batch, "--json", str(out)]
    assert cli.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["scenario"] == "http" and doc["throughput"] > 0
    assert doc["counts"]["requests_ok"] > 0 and doc["counts"]["requests_failed"] == 0
    assert doc["ack_latency"]["p50_ms"] > 0 and doc["params"]["batch"] == int(batch)
