"""Draining the WAL into the database log, exactly once.

`replayer` (the loop: read records, build rows, write a batch and its checkpoint in one
transaction, back off while the database is down), `service` (the replayer as a
supervised child process of `ferry serve`), and `child` (that child's entry point). `ferry replay`, the same loop run by hand with
serve's settings, is `core.replay_tool` (it reads the config: composition root).
"""
