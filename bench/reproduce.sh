#!/usr/bin/env bash
# Every measurement in docs/benchmarks.md, in the order it was taken. Results (JSON and
# the terminal tables) go to $OUT (default artifacts/bench), the chart to docs/.
#   bench/reproduce.sh            everything (~15 minutes on a quiet machine)
#   bench/reproduce.sh fanout     only the steps whose name starts with "fanout"
# MySQL: $BENCH_MYSQL_URL (default: the local MariaDB, database ferry_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/bench}
ONLY=${1:-}
MYSQL=${BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/ferry_bench}
PY=.venv/bin/python
mkdir -p "$OUT"

run() {  # run NAME ARGS... : one `ferry bench` invocation, its load average logged first
    local name=$1; shift
    [[ -z $ONLY || $name == "$ONLY"* ]] || return 0
    echo "== $name: $(uptime)" | tee -a "$OUT/load.txt"
    "$PY" -m bench.cli "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
}

# fan-out: ferry (WAL, fsync, replayer into SQLite, as `ferry serve` runs by default)
# against Node ws and python websockets, same load generator and parameters
# (--repeat 3: three rounds, each target's best run kept: the machine is shared)
run fanout-compare compare fanout -S 100 -W 128 --payload 128 --seconds 10 --repeat 3
# the same without the replayer child, and without fdatasync: what limits what
run fanout-noreplayer fanout -S 100 -W 128 --seconds 10 --repeat 2 --server-env FERRY_REPLAYER=false
run fanout-memory fanout -S 100 -W 128 --seconds 10 --repeat 2 --log memory
# rooms: 1000 connections in 100 rooms, 10k publishes/s in total
run rooms-compare compare rooms -R 100 -M 10 --rate 10000 --seconds 10 --repeat 3
run rooms-noreplayer rooms -R 100 -M 10 --rate 10000 --seconds 10 --repeat 2 --server-env FERRY_REPLAYER=false
run rooms-memory rooms -R 100 -M 10 --rate 10000 --seconds 10 --repeat 2 --log memory
# ingest: 50 durable publishers, closed loop; then open loop at half that rate
run ingest ingest -P 50 -W 32 --seconds 10 --repeat 3
if [[ -z $ONLY || ingest-half == "$ONLY"* ]]; then
    HALF=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1]))['throughput'] / 2))" "$OUT/ingest.json")
    run ingest-half ingest -P 50 --rate "$HALF" --seconds 10 --repeat 3
    # what makes the half-rate tail: the replayer child, fdatasync, segment rotation?
    run ingest-half-noreplayer ingest -P 50 --rate "$HALF" --seconds 10 --repeat 2 \
        --server-env FERRY_REPLAYER=false
    run ingest-half-write ingest -P 50 --rate "$HALF" --seconds 10 --repeat 2 --wal-sync write
    run ingest-half-bigsegments ingest -P 50 --rate "$HALF" --seconds 10 --repeat 2 \
        --server-env FERRY_WAL_SEGMENT_BYTES=1073741824
    rm -f /dev/shm/ferry-bench.db*
    run ingest-half-shmdb ingest -P 50 --rate "$HALF" --seconds 10 \
        --db sqlite:////dev/shm/ferry-bench.db
    rm -f /dev/shm/ferry-bench.db*
fi
# idle connections: server RSS per connection
run connections connections -N 15000 --seconds 5
run connections-compare compare connections -N 15000 --seconds 5 --repeat 2
# WAL -> database
run replay-sqlite replay -N 1000000
run replay-sqlite-profile replay -N 1000000 --profile "$OUT/pyspy"
if mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS ferry_bench' 2>/dev/null; then
    run replay-mysql replay -N 1000000 --db "$MYSQL"
fi
# profiles (separate runs: py-spy costs the server CPU)
run profile-fanout fanout -S 100 -W 128 --seconds 10 --profile "$OUT/pyspy"
run profile-fanout-native fanout -S 100 -W 128 --seconds 5 --profile "$OUT/pyspy-native" --profile-native
run profile-rooms rooms -R 100 -M 10 --rate 10000 --seconds 10 --profile "$OUT/pyspy"
run profile-rooms-native rooms -R 100 -M 10 --rate 10000 --seconds 6 --profile "$OUT/pyspy-native" --profile-native
run profile-ingest ingest -P 50 -W 32 --seconds 10 --profile "$OUT/pyspy"
run profile-connections connections -N 15000 --seconds 2 --profile "$OUT/pyspy"
run profile-connections-native connections -N 15000 --seconds 1 --warmup 0 \
    --profile "$OUT/pyspy-native" --profile-native
run profile-connections-memory connections -N 5000 --seconds 2 --tracemalloc
# the chart
if [[ -z $ONLY ]]; then
    "$PY" -m bench.cli chart "$OUT/fanout-compare.json" "$OUT/rooms-compare.json" \
        "$OUT/ingest.json" "$OUT/connections-compare.json" --out docs/benchmarks.png \
        --title "ferry vs Node ws vs python websockets ($(nproc) cores, $(date -u +%F))"
fi
