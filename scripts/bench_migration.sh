#!/usr/bin/env bash
# Benchmark of the legacy migration: the generated legacy set (SQLite copies of the three
# systems) migrated into a PostgreSQL store by `snodo migrate run`. Reports the time and
# rows/s of every phase and snodo's peak RSS.
#
#   scripts/bench_migration.sh                 # 1M persons (≈ 20M legacy rows)
#   PERSONS="100000 1000000" scripts/bench_migration.sh
#
# Output: a Markdown table per size on standard output; docs/benchmarks.md records results.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQLX_OFFLINE=true
PERSONS=${PERSONS:-"1000000"}
WORK=${WORK:-$(mktemp -d /tmp/snodo-bench-migration.XXXXXX)}
chmod 755 "$WORK" # the cluster runs as the postgres user when this runs as root
cargo build --release --quiet
BIN=$PWD/target/release/snodo

# Throwaway PostgreSQL cluster, stopped on exit.
PG_OPTS="-c shared_buffers=256MB -c max_wal_size=4GB"
. scripts/pg_throwaway.sh

for n in $PERSONS; do
  legacy=$WORK/legacy_$n
  if [ ! -f "$legacy/expect.json" ]; then
    /usr/bin/time -f "%e" -o "$WORK/gen_time" python3 scripts/gen_legacy_db.py --out "$legacy" --persons "$n" --seed 1 --format sqlite >/dev/null
    echo "generated $n persons in $(cat "$WORK/gen_time") s" >&2
  fi
  $PSQL -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
  rm -f "$WORK/flowlog.db"*
  cat > "$WORK/snodo.yaml" <<YAML
connections:
  store:
    postgres: { host: 127.0.0.1, port: $PORT, database: bench, user: postgres }
  flowlog:
    sqlite: { path: $WORK/flowlog.db }
  legacy_segretariato:
    sqlite: { path: $legacy/segretariato.sqlite }
  legacy_web_distretti:
    sqlite: { path: $legacy/web_distretti.sqlite }
  legacy_scheda_tecnica:
    sqlite: { path: $legacy/scheda_tecnica.sqlite }
flow_log: { connection: flowlog }
YAML
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$BIN" --config "$WORK/snodo.yaml" migrate run pipelines/migrazione/*.yaml \
    --json --report-dir "$WORK/reports_$n" > "$WORK/outcome_$n.json" || true
  read -r secs kb < "$WORK/time"
  python3 - "$n" "$secs" "$kb" "$WORK/outcome_$n.json" "$legacy/expect.json" <<'PY'
import json, sys
n, secs, kb, path, expect = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
o = json.load(open(path))
e = json.load(open(expect))
rows = sum(e["tables"].values())
print(f"\n### {n:,} persons, {rows:,} legacy rows: {secs:.0f} s in all, peak RSS {kb/1024:.0f} MB, status `{o['status']}`\n")
print("| phase | rows | seconds | rows/s |")
print("|---|---:|---:|---:|")
for p in o["phases"]:
    print(f"| {p['phase']} | {p['rows']:,} | {p['seconds']:.1f} | {p['rows_per_second']:,.0f} |")
r = o.get("report") or {}
if r:
    t = r["tables"]
    print(f"\nreconciled: {r['reconciled']}; read {sum(x['read']['rows'] for x in t):,}, "
          f"rejected {sum(x['rejected']['rows'] for x in t):,}; persons {r['persons']['source_rows']:,} → {r['persons']['persons']:,}; "
          f"PIA differences {r['pia']['differences']:,}")
PY
done
