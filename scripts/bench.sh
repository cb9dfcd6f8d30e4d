#!/usr/bin/env bash
# Benchmark: legacy CSV → validation + mapping → PostgreSQL, against `psql \copy` of the
# same file into a staging table (no validation at all). Reports rows/s and snodo's peak RSS.
# The input has no malformed rows, because psql \copy cannot skip them (snodo would reject
# them); validation still runs on every row.
#
#   scripts/bench.sh                 # 1M and 4M rows
#   ROWS="200000" scripts/bench.sh   # quicker
#   REPEAT=5 scripts/bench.sh        # more runs of each side (default 3)
#   BATCH=2000 scripts/bench.sh      # records per batch (default 3000, see below)
#   COMMIT_ROWS=0 scripts/bench.sh   # records per transaction (default 9000, see below)
#
# Each side runs REPEAT times, snodo into a new database each time, psql into a new staging
# table each time, the two sides alternating (since the twelfth round; before it all of
# snodo's runs came first), and the table gives each side's median with the range after
# it, and the range of the ratios of the pairs run back to back: on two shared cores a
# single pair of runs has put the ratio anywhere from 2.4x to 4x (the psql copy alone took
# 1.4-2.2 s at 1M in one hour), and the median of each side is the fair comparison.
#
# snodo runs with `batch_size: 3000` (BATCH) and its sink with `commit_rows: 9000`
# (COMMIT_ROWS; 0 is one transaction per batch, the default), as a bulk load would: three
# batches per transaction, sent in PostgreSQL's binary COPY format, which costs the server
# less CPU than text from about 5000 rows per COPY; only the encoded rows wait for their
# transaction, so memory follows the batch size (about 14 MB per 1000 records of it: ten
# batches are in flight between the stages). Before the eleventh round a batch was a
# transaction and the benchmark ran batches of 4000 (docs/benchmarks.md has both).
#
# The last column is psql \copy of snodo's own result into a new table like it (typed, keyed,
# logged): PostgreSQL's share of any durable load, which the staging baseline does not pay.
# Results go to standard output as a Markdown table; docs/benchmarks.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQLX_OFFLINE=true
export PGOPTIONS="-c client_min_messages=warning" # no NOTICE for what DROP … IF EXISTS skips
ROWS=${ROWS:-"1000000 4000000"}
WORK=${WORK:-$(mktemp -d /tmp/snodo-bench.XXXXXX)}
chmod 755 "$WORK" # the cluster runs as the postgres user when this runs as root
cargo build --release --quiet
BIN=$PWD/target/release/snodo

# Throwaway PostgreSQL cluster, stopped on exit.
. scripts/pg_throwaway.sh

cat > "$WORK/snodo.yaml" <<YAML
connections:
  pg:
    postgres: { host: 127.0.0.1, port: $PORT, database: bench, user: postgres }
  flowlog:
    sqlite: { path: $WORK/flowlog.db }
flow_log: { connection: flowlog }
YAML

echo "snodo with batch_size: ${BATCH:-3000}, commit_rows: ${COMMIT_ROWS:-9000}"
echo
echo "| rows | snodo s (median, range) | snodo rows/s | snodo peak RSS MB | psql \\copy s (median, range) | psql rows/s | ratio of medians | psql into a copy of snodo's table s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
REPEAT=${REPEAT:-3}
for n in $ROWS; do
  csv=$WORK/legacy_$n.csv
  [ -f "$csv" ] || python3 scripts/gen_legacy_csv.py --rows "$n" --seed 1 --bad-rate 0 --out "$csv" >/dev/null
  sed -e "s#path: tests/fixtures/csv/assistiti_legacy.csv#path: $csv#" \
      -e "s#connection: store#connection: pg#" \
      -e "s#pipeline: esempio-assistiti#pipeline: bench-$n\nbatch_size: ${BATCH:-3000}#" \
      -e "s#    create_table: true#    create_table: true\n    commit_rows: ${COMMIT_ROWS:-9000}#" \
      pipelines/esempio/assistiti_csv_sqlite.yaml > "$WORK/p.yaml"
  snodo_secs=() snodo_kb=() psql_secs=()
  # The psql side: the same file through \copy into an all-text staging table (what a DBA
  # would do).
  cols=$(head -1 "$csv" | tr ';' '\n' | sed 's/.*/"&" text/' | paste -sd, -)
  # The two sides alternate (snodo, psql, snodo, psql, ...): the machine's speed drifts
  # within minutes on a shared host, and a pair run back to back meets the same machine.
  for r in $(seq "$REPEAT"); do
    # Every snodo run starts from nothing: a new database, a new flow log.
    $PSQL -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench" -c "CHECKPOINT"
    rm -f "$WORK"/flowlog.db*
    # PROFILE=1 records a perf profile of snodo's last run in $WORK/perf-N.data (slower; for analysis).
    wrap=()
    [ -n "${PROFILE:-}" ] && [ "$r" = "$REPEAT" ] && wrap=(perf record -F 499 -g -o "$WORK/perf-$n.data" --)
    /usr/bin/time -f "%e %M" -o "$WORK/time" "${wrap[@]}" "$BIN" --config "$WORK/snodo.yaml" run "$WORK/p.yaml" --json > "$WORK/summary.json"
    read -r secs kb < "$WORK/time"
    snodo_secs+=("$secs") snodo_kb+=("$kb")
    written=$(python3 -c "import json; print(json.load(open('$WORK/summary.json'))['written'])")
    [ "$written" = "$n" ] || { echo "snodo wrote $written of $n rows" >&2; exit 1; }

    $PSQL -d bench -c "DROP TABLE IF EXISTS staging" -c "CREATE UNLOGGED TABLE staging ($cols)" -c "CHECKPOINT"
    start=$(date +%s.%N)
    $PSQL -d bench -c "\\copy staging FROM '$csv' WITH (FORMAT csv, DELIMITER ';', HEADER true, ENCODING 'WIN1252')"
    end=$(date +%s.%N)
    psql_secs+=("$(python3 -c "print(round($end - $start, 2))")")
  done

  # What PostgreSQL alone pays to store the same rows durably: snodo's table (typed,
  # keyed, logged) copied with psql from a dump of itself, into a new table like it.
  # Any loader pays this; the staging baseline above does not.
  $PSQL -d bench -c "\\copy assistito TO '$WORK/rows.txt'"
  $PSQL -d bench -c "CREATE TABLE target_like (LIKE assistito INCLUDING ALL)" -c "CHECKPOINT"
  start=$(date +%s.%N)
  $PSQL -d bench -c "\\copy target_like FROM '$WORK/rows.txt'"
  end=$(date +%s.%N)
  tsecs=$(python3 -c "print(round($end - $start, 2))")
  rm -f "$WORK/rows.txt"
  python3 - "$n" "$tsecs" "${snodo_secs[*]}" "${snodo_kb[*]}" "${psql_secs[*]}" <<'PY'
import statistics, sys
n, tsecs = int(sys.argv[1]), float(sys.argv[2])
snodo = [float(x) for x in sys.argv[3].split()]
kb = max(int(x) for x in sys.argv[4].split())
psql = [float(x) for x in sys.argv[5].split()]
s, p = statistics.median(snodo), statistics.median(psql)
span = lambda xs: f"{min(xs):.1f}–{max(xs):.1f}"
pairs = [a / b for a, b in zip(snodo, psql)]
print(f"| {n:,} | {s:.1f} ({span(snodo)}) | {n/s:,.0f} | {kb/1024:.0f} | {p:.1f} ({span(psql)}) | {n/p:,.0f} | {s/p:.2f}× (pairs {min(pairs):.2f}–{max(pairs):.2f}×) | {tsecs:.1f} ({tsecs/p:.2f}× the staging copy) |")
PY
done
