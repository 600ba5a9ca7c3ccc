"""The result of one run (and of a comparison): JSON on disk, a table on the terminal.

JSON layout (`--json FILE`), one run:

    {"kind": "run", "scenario": "fanout", "target": "ferry", "params": {...},
     "throughput": 1234567.0, "unit": "deliveries/s",
     "latency":     {"what": "publish->deliver", "p50_ms", "p99_ms", "p999_ms", "max_ms", "samples"},
     "ack_latency": {... "what": "pub->ack"} | null,
     "counts": {"published", "acked", "delivered", "errors", "disconnects",
                "connected", "connect_failures"},
     "server": {"pid", "cpu_s", "cpu_util", "cpu_us_per_unit", "peak_rss_kb", "rss_kb_end", ...},
     "client": {"workers", "cpu_util": [per worker]},
     "goals": [{"goal": "...", "value": ..., "met": bool}],
     "machine": {...}, "load_avg": [1m, 5m, 15m] (before the run), "started_at": "...",
     "noise": {"machine_busy_cores", "others_cores"} (in the window), "notes": [...],
     "settings": {FERRY_* the server ran with}, "profile": {...} | null}

A comparison: {"kind": "compare", "scenario", "params", "runs": [run, ...], "ratios": {...}}.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.stages import format_stages

if TYPE_CHECKING:  # hdrhistogram is the `bench` extra
    from hdrh.histogram import HdrHistogram

RESULT_KEYS = (
    "kind",
    "scenario",
    "target",
    "params",
    "throughput",
    "unit",
    "latency",
    "ack_latency",
    "counts",
    "server",
    "client",
    "goals",
    "machine",
    "load_avg",
    "noise",
    "started_at",
    "notes",
)


def latency_summary(hist: HdrHistogram, what: str) -> dict[str, Any] | None:
    """Percentiles in milliseconds from a histogram of microseconds; None when empty."""
    count = hist.get_total_count()
    if not count:
        return None

    def ms(percentile: float) -> float:
        value: int = hist.get_value_at_percentile(percentile)
        return round(value / 1000.0, 3)

    return {
        "what": what,
        "p50_ms": ms(50.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": round(hist.get_max_value() / 1000.0, 3),
        "samples": count,
    }


@dataclass
class Result:
    scenario: str
    target: str
    params: dict[str, Any]
    throughput: float
    unit: str
    latency: dict[str, Any] | None = None
    ack_latency: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=dict)  # machine busy, others' cores
    load_avg: list[float] = field(default_factory=list)
    started_at: str = ""
    code: str = ""  # git commit of the code under test (+dirty)
    repeats: list[dict[str, Any]] = field(default_factory=list)  # every run (--repeat)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None  # connections --tracemalloc: growth by line
    # ferry's own per-stage latency over the window (bench/stages.py), by stage
    stages: dict[str, dict[str, Any]] | None = None
    kind: str = "run"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")


def compare_doc(results: list[Result]) -> dict[str, Any]:
    """The comparison record: every run, and ferry's ratio against each peer."""
    runs = [r.to_json() for r in results]
    ratios: dict[str, dict[str, float | None]] = {}
    base = next((r for r in results if r.target == "ferry"), results[0])
    for r in results:
        if r is base:
            continue
        ratios[f"{base.target}/{r.target}"] = {
            "throughput": _ratio(base.throughput, r.throughput),
            # < 1 means ferry spends less server CPU per unit of work
            "cpu_us_per_unit": _ratio(
                base.server.get("cpu_us_per_unit"), r.server.get("cpu_us_per_unit")
            ),
            "p99_ms": _ratio(_p99(base), _p99(r)),
        }
    return {
        "kind": "compare",
        "scenario": base.scenario,
        "params": base.params,
        "runs": runs,
        "ratios": ratios,
    }


def _p99(r: Result) -> float | None:
    lat = r.latency or r.ack_latency
    return None if lat is None else float(lat["p99_ms"])


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(float(a) / float(b), 3)


# --- terminal --------------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 100_000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def _row(r: Result) -> list[str]:
    lat = r.latency or r.ack_latency or {}
    s = r.server
    return [
        r.target,
        f"{r.throughput:,.0f} {r.unit}",
        _num(lat.get("p50_ms"), 3),
        _num(lat.get("p99_ms"), 3),
        _num(lat.get("p999_ms"), 3),
        _num(s.get("cpu_us_per_unit"), 3),
        _num(s.get("cpu_util"), 2),
        _num(s.get("peak_rss_kb")),
        " ".join(f"{u:.0%}" for u in r.client.get("cpu_util", [])),
    ]


HEADERS = [
    "target",
    "throughput",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "srv CPU µs/unit",
    "srv CPU",
    "srv peak RSS kB",
    "loadgen CPU",
]


def format_run(r: Result) -> str:
    lat = r.latency or r.ack_latency
    params = " ".join(f"{k}={v}" for k, v in r.params.items())
    lines = [
        f"== {r.scenario} on {r.target}: {params}",
        _table(HEADERS, [_row(r)]),
    ]
    if lat is not None:
        lines.append(f"latency: {lat['what']} ({lat['samples']:,} samples)")
    if r.ack_latency is not None and r.latency is not None:
        a = r.ack_latency
        lines.append(
            f"pub->ack: p50 {a['p50_ms']:.3f} ms  p99 {a['p99_ms']:.3f} ms  "
            f"p99.9 {a['p999_ms']:.3f} ms ({a['samples']:,} samples)"
        )
    c = r.counts
    lines.append("counts: " + "  ".join(f"{k}={v:,}" for k, v in c.items() if isinstance(v, int)))
    extra = {
        k: v
        for k, v in r.server.items()
        if k not in ("cpu_us_per_unit", "cpu_util", "peak_rss_kb", "pid", "children")
        and v is not None
    }
    if extra:
        lines.append("server: " + "  ".join(f"{k}={_num(v, 3)}" for k, v in extra.items()))
    if r.noise or r.load_avg:
        lines.append(
            f"machine: load average before {r.load_avg}; in the window "
            f"{r.noise.get('machine_busy_cores')} cores busy, "
            f"{r.noise.get('others_cores')} of them other processes"
        )
    for child in r.server.get("children", []):
        lines.append(
            f"server child {child['pid']} ({child['cmd'][:60]}): cpu_s={child['cpu_s']}"
            f"  peak_rss_kb={_num(child['peak_rss_kb'])}"
        )
    if r.stages:
        lines.append(format_stages(r.stages))
    for goal in r.goals:
        mark = "met" if goal["met"] else "MISSED"
        lines.append(f"goal {goal['goal']}: {_num(goal['value'], 3)} -> {mark}")
    if r.profile:
        lines.append(format_profile(r.profile))
    if r.memory:
        lines.append(format_memory(r.memory))
    lines.extend(f"note: {n}" for n in r.notes)
    return "\n".join(lines)


def format_profile(profile: dict[str, Any], top: int = 15) -> str:
    if profile.get("error"):
        return f"py-spy: {profile['error']}"
    threads = ", ".join(f"{t['thread']} {t['pct']:.0f}%" for t in profile.get("threads", []))
    lines = [
        f"py-spy ({profile.get('phase', 'window')}): {profile.get('samples', 0):,} samples, "
        f"busy {profile.get('busy_fraction')}; threads: {threads} -> {profile.get('raw', '')}"
    ]
    for thread, ranked in profile.get("by_thread", {}).items():
        rows = [
            [f["function"][:90], f"{f['own_pct']:.1f}%", f"{f['total_pct']:.1f}%"]
            for f in ranked[:top]
        ]
        if rows:
            lines.append(_table([f"{thread}: function (own time)", "own", "total"], rows))
    return "\n".join(lines)


def format_memory(memory: dict[str, Any], top: int = 15) -> str:
    per = memory.get("traced_bytes_per_conn")
    rows = [
        [row["site"][-80:], _num(row.get("bytes_per_conn")), _num(row.get("blocks_per_conn"), 2)]
        for row in memory.get("top", [])[:top]
    ]
    head = f"tracemalloc: {_num(per)} traced bytes per connection"
    return head + "\n" + _table(["allocated at", "bytes/conn", "blocks/conn"], rows)


def format_compare(doc: dict[str, Any], results: list[Result]) -> str:
    params = " ".join(f"{k}={v}" for k, v in doc["params"].items())
    lines = [f"== compare {doc['scenario']}: {params}", _table(HEADERS, [_row(r) for r in results])]
    for pair, ratio in doc["ratios"].items():
        parts = []
        if ratio["throughput"] is not None:
            parts.append(f"throughput x{ratio['throughput']:.2f}")
        if ratio["cpu_us_per_unit"] is not None:
            parts.append(f"server CPU per unit x{ratio['cpu_us_per_unit']:.2f}")
        if ratio["p99_ms"] is not None:
            parts.append(f"p99 x{ratio['p99_ms']:.2f}")
        lines.append(f"{pair}: " + ", ".join(parts))
    for r in results:
        lines.extend(f"note ({r.target}): {n}" for n in r.notes)
    return "\n".join(lines)


# --- markdown (docs/benchmarks.md) ---------------------------------------------------------


def _md_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["runs"]) if doc.get("kind") == "compare" else [doc]


def markdown_table(docs: list[dict[str, Any]]) -> str:
    """One markdown row per run in `docs` (result or comparison JSON documents)."""
    head = (
        "| scenario | target | params | throughput | p50 ms | p99 ms | p99.9 ms "
        "| srv CPU µs/unit (main) | srv CPU | srv peak RSS | RSS/conn | loadgen CPU "
        "| others' cores |"
    )
    lines = [head, "|" + "---|" * 13]
    for doc in docs:
        for r in _md_runs(doc):
            lat = r.get("latency") or r.get("ack_latency") or {}
            s = r.get("server", {})
            per = s.get("cpu_us_per_unit")
            main = s.get("cpu_us_per_unit_main")
            cpu = "-" if per is None else f"{per:.3f}" + (f" ({main:.3f})" if main else "")
            params = " ".join(f"{k}={v}" for k, v in r.get("params", {}).items())
            peak = s.get("peak_rss_kb")
            util = s.get("cpu_util")
            loadgen = " ".join(f"{u:.0%}" for u in r.get("client", {}).get("cpu_util", []))
            lines.append(
                f"| {r['scenario']} | {r['target']} | {params} "
                f"| {r['throughput']:,.0f} {r['unit']} "
                f"| {_num(lat.get('p50_ms'), 3)} | {_num(lat.get('p99_ms'), 3)} "
                f"| {_num(lat.get('p999_ms'), 3)} | {cpu} "
                f"| {'-' if util is None else f'{util:.2f}'} "
                f"| {'-' if peak is None else f'{peak / 1024:.1f} MiB'} "
                f"| {_num(s.get('rss_per_conn_kb'), 2)}{' KB' if 'rss_per_conn_kb' in s else ''} "
                f"| {loadgen or '-'} "
                f"| {r.get('noise', {}).get('others_cores', '-')} |"
            )
    return "\n".join(lines)
