"""ferry's load benchmark, peer servers and micro-benchmarks (issue 6).

bench/cli.py        `ferry bench SCENARIO` / `ferry bench compare SCENARIO` / `ferry bench chart`
bench/scenarios.py  what each scenario asks of the load generator, and what it reports
bench/runner.py     the coordinator: target up, workers spawned, one timeline, /proc read
bench/loadgen.py    the worker processes: picows clients that count frames, not parse them
bench/targets.py    the server under test: `ferry serve`, a peer, or one already running
bench/procfs.py     CPU seconds, RSS and machine facts from /proc
bench/profiling.py  py-spy on the server during the measured window; top functions
bench/report.py     the result record, the terminal table, JSON
bench/chart.py      the PNG for docs/benchmarks.md (matplotlib)
bench/replay.py     WAL -> database drain (needs wal.log and the replayer)
bench/peers/        the protocol-v1 subset on Node `ws` and on python `websockets`
bench/micro/        pytest-benchmark micro-benchmarks of the hot paths
"""
