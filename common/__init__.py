"""What the relay (`core`) and the write-ahead log (`wal`) share, and nothing else.

`durability` (the durable-log seam: `Entry`, `Encoding`, `RecordType`, `RecoveredState`,
the `DurableLog` Protocol), `service` (one lifecycle for background work), `errors` (the
root of ferry's error tree), `logsetup` (structured logging). It imports neither core nor
wal; wal imports only common; core imports wal only in its composition root
(`core.compose`, `core.cli`, `core.replay_tool`). tests/test_import_rules.py holds the rules.
"""
