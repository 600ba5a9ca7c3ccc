"""ferry's cluster on NATS: channels spread over nodes, each channel owned by one of them
(docs/cluster.md is the design, its failure table and what failover would take).

    slots.py        slot = crc32(channel) % 256, owners by rendezvous hashing (pure)
    fingerprint.py  the node list recorded next to the WAL; a changed one is refused
    wire.py         the NATS subjects and messages
    bus.py          the NATS connection (nats-py) behind a small `Bus`
    forward.py      publishes for remote channels, batched per owner per tick; the owner's intake
    feed.py         per-slot feeds out of the owner; following, resync, 4409
    history.py      the owner's answers (sync, history); `ClusterHistory` for `since`
    node.py         `ClusterNode`: all of it as one service, the relay's `core.remote.Remote`
    metrics.py      `ferry_cluster_*` in /metrics

Errors:

    FerryError
    ├── ClusterChanged     fingerprint.py: the node list differs from the WAL's (start refused)
    └── Unreachable        bus.py: a request got no answer
        ├── NoResponders   nobody serves the subject: nothing was accepted
        └── Timeout        no answer in time: the outcome is unknown

`wal/` knows nothing of this package; `core/` knows only `core.remote.Remote`. The
composition root (core/compose.py) puts a `ClusterNode` under the relay when
`FERRY_CLUSTER_NODES` is set.
"""
