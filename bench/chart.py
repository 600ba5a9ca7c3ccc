"""The PNG in docs/benchmarks.md: one column per result file (a comparison or a run),
throughput on top, server CPU per unit of work below, p99 latency written on the bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLORS = {"ferry": "#1f77b4", "node-ws": "#ff7f0e", "websockets": "#2ca02c"}


def _runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["runs"]) if doc.get("kind") == "compare" else [doc]


def _title(doc: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in doc.get("params", {}).items())
    return f"{doc['scenario']}\n{params}"


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def render(docs: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    cols = len(docs)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 6.4), squeeze=False)
    for col, doc in enumerate(docs):
        runs = _runs(doc)
        names = [r["target"] for r in runs]
        colors = [COLORS.get(n, "#7f7f7f") for n in names]
        top, bottom = axes[0][col], axes[1][col]
        # rooms publish at a set rate: what differs is the latency, so that is on top
        by_latency = doc["scenario"] == "rooms"
        if by_latency:
            values = [float((r.get("latency") or {}).get("p99_ms") or 0.0) for r in runs]
        else:
            values = [float(r["throughput"]) for r in runs]
        bars = top.bar(names, values, color=colors)
        for bar, r, v in zip(bars, runs, values, strict=True):
            lat = r.get("latency") or r.get("ack_latency")
            if by_latency:
                label = f"{v:.1f} ms\n{_short(float(r['throughput']))}/s"
            else:
                label = _short(v) + (f"\np99 {lat['p99_ms']:.2f} ms" if lat else "")
            top.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        top.set_title(_title(doc), fontsize=9)
        top.set_ylabel("p99 publish->deliver, ms" if by_latency else runs[0]["unit"])
        top.yaxis.set_major_formatter(EngFormatter(sep=""))
        top.margins(y=0.25)
        if doc["scenario"] == "connections":
            key, label = "rss_per_conn_kb", "server RSS KB per connection"
        else:
            key, label = "cpu_us_per_unit", "server CPU µs per unit"
        cpu = [r["server"].get(key) or 0.0 for r in runs]
        cbars = bottom.bar(names, cpu, color=colors)
        for bar, v in zip(cbars, cpu, strict=True):
            bottom.annotate(
                f"{v:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        bottom.set_ylabel(label)
        bottom.margins(y=0.2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_files(paths: list[str], out: str, title: str = "") -> Path:
    return render([json.loads(Path(p).read_text()) for p in paths], out, title)
