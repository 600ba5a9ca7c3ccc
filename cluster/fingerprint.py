"""The cluster fingerprint next to the WAL: a changed node list is refused at start-up.

`<wal_dir>/cluster.json` holds the cluster id and the node list this WAL was written
under. A channel whose slot moved would restart at seq 1 on its new owner, so a node
started with another list refuses to start and names the slots that would move
(docs/cluster.md, "The fingerprint"). A WAL directory with segments but no fingerprint
was a single node (`[node_id]`). The file is written atomically: a temporary file,
fsync, rename, directory fsync. `wal/` knows nothing of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cluster.slots import SlotMap
from common.errors import FerryError

FILE = "cluster.json"
VERSION = 1


class ClusterChanged(FerryError):
    """The node list differs from the one this WAL was written under."""


def _stored(wal_dir: Path, node_id: str) -> tuple[str, ...] | None:
    path = wal_dir / FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        has_segments = wal_dir.is_dir() and any(wal_dir.glob("*.wal"))
        return (node_id,) if has_segments else None
    except (OSError, ValueError) as exc:
        raise ClusterChanged(f"{path}: unreadable cluster fingerprint ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ClusterChanged(f"{path}: unknown cluster fingerprint format")
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ClusterChanged(f"{path}: unknown cluster fingerprint format")
    return tuple(nodes)


def _describe(moves: dict[int, tuple[str, str]]) -> str:
    shown = ", ".join(f"{slot} ({old} -> {new})" for slot, (old, new) in list(moves.items())[:20])
    more = f" and {len(moves) - 20} more" if len(moves) > 20 else ""
    return f"{len(moves)} slots would move: {shown}{more}"


def check_and_record(wal_dir: str, node_id: str, nodes: tuple[str, ...]) -> None:
    """Refuse (`ClusterChanged`) a node list other than the recorded one; record it the
    first time."""
    directory = Path(wal_dir)
    wanted = tuple(sorted(nodes))
    stored = _stored(directory, node_id)
    if stored is not None and tuple(sorted(stored)) != wanted:
        moves = SlotMap(stored).moves(SlotMap(wanted))
        raise ClusterChanged(
            f"this WAL ({wal_dir}) was written by a cluster of {','.join(sorted(stored))}, "
            f"not {','.join(wanted)}: {_describe(moves)} and their channels would restart "
            "at seq 1. Start with the recorded node list (docs/cluster.md)."
        )
    if stored is not None and (directory / FILE).exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (FILE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"version": VERSION, "nodes": list(wanted)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
