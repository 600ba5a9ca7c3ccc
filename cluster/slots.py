"""Slots and their owners (docs/cluster.md, "Slots and owners"). Pure: no I/O.

`slot_of(channel) = crc32(channel) % 256`: zlib's CRC-32 of the UTF-8 name is the same on
every process and host (Python's `hash()` is salted per process). Each slot's owner is
chosen by rendezvous hashing over the node list: the node with the highest
`blake2b(f"{node}/{slot}")` weight. One node more or fewer moves only the slots it wins
or held.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

SLOTS = 256


def slot_of(channel: str) -> int:
    return zlib.crc32(channel.encode()) % SLOTS


def _weight(node: str, slot: int) -> tuple[int, str]:
    digest = hashlib.blake2b(f"{node}/{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), node  # the name breaks a (never seen) tie


class SlotMap:
    """Every slot's owner for one node list (the same on every node given that list)."""

    __slots__ = ("nodes", "owners")

    def __init__(self, nodes: Iterable[str]) -> None:
        self.nodes = tuple(sorted(set(nodes)))
        if not self.nodes:
            raise ValueError("a slot map needs at least one node")
        self.owners: tuple[str, ...] = tuple(
            max(self.nodes, key=lambda node: _weight(node, slot)) for slot in range(SLOTS)
        )

    def owner_of(self, channel: str) -> str:
        return self.owners[slot_of(channel)]

    def slots_of(self, node: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == node]

    def moves(self, other: SlotMap) -> dict[int, tuple[str, str]]:
        """The slots whose owner differs in `other`: slot -> (owner here, owner there)."""
        return {
            slot: (mine, theirs)
            for slot, (mine, theirs) in enumerate(zip(self.owners, other.owners, strict=True))
            if mine != theirs
        }
