#!/usr/bin/env bash
# Benchmark of the INPS PS/PSA-SINA flow: N prestazioni (default 1M, two per person, one
# person in three with a SINA assessment) in a PostgreSQL store, rendered to one XML file
# through the layout with per-record XSD validation, the ledger and libxml2's final check.
# Compared with `psql \copy` exporting the same query to CSV (no rendering, no validation).
# Reports wall time and snodo's peak RSS. Usage: scripts/bench_siuss.sh [N...]
# PROFILE=1 also records a perf profile per N in $WORK; KEEP=1 keeps the XML files;
# BATCH_SIZE=N overrides the pipeline's batch size; STATS=1 prints PostgreSQL's ten
# statements with the most total time in snodo's run (pg_stat_statements).
# AB="BINARY_A BINARY_B" (PAIRS=3) runs two builds alternately on the same store instead.
# REPEAT=N (default 3): snodo and the psql export each run N times on the same store, the
# ledger emptied before each snodo run; the table gives medians with their range.
# FLOOR=1 then times, each alone and by PostgreSQL's and libxml2's own tools (no snodo),
# three parts of the work the flow cannot skip: the export (`psql \copy`, as above), storing
# the run's ledger rows (one binary `COPY` into an empty copy of `siuss_invio`: a lower
# bound, the flow commits per batch so that a crash loses nothing), and `xmllint --stream`
# of the run's file. Their CPU against the two cores' budget is in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQLX_OFFLINE=true
cargo build --release --locked -q
SNODO=$PWD/target/release/snodo
WORK=${WORK:-$(mktemp -d /tmp/snodo-bench-siuss.XXXXXX)}
chmod 755 "$WORK" # the cluster runs as the postgres user when this runs as root
[ -n "${STATS:-}" ] && PG_OPTS="${PG_OPTS:-} -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
source scripts/pg_throwaway.sh
export SNODO_SIUSS_CF_OPERATORE=RSSMRA85T10A562S SNODO_PG_PASSWORD=unused
# One run of the flow on the kept store, from an empty ledger: sets secs, kb (peak RSS) and
# idle (the machine's idle CPU seconds during the run, both cores). Arguments: an optional
# wrapper command, then the binary.
run_once() {
  $PSQL -d "$db" -c "TRUNCATE siuss_invio, siuss_flusso, siuss_progressivo" -c "VACUUM ANALYZE siuss_invio" -c "CHECKPOINT" >/dev/null
  rm -rf "$WORK/out" "$WORK/flowlog_$n.db"*
  local idle0 idle1 written
  idle0=$(awk '/^cpu /{print $5 + $6}' /proc/stat)
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" --config "$WORK/snodo.yaml" run "$WORK/ps.yaml" --json > "$WORK/run.json"
  idle1=$(awk '/^cpu /{print $5 + $6}' /proc/stat)
  read -r secs kb < "$WORK/time"
  idle=$(awk -v d=$((idle1 - idle0)) 'BEGIN{printf "%.1f", d / 100}')
  written=$(python3 -c "import json;print(json.load(open('$WORK/run.json'))['written'])")
  [ "$written" = "$n" ] || { echo "${*: -1} wrote $written of $n" >&2; exit 1; }
}
if [ -z "${AB:-}" ]; then
  printf '| prestazioni | snodo (XML + XSD), median (range) | peak RSS | psql \\copy CSV, median (range) | ratio of medians |\n|---:|---:|---:|---:|---:|\n'
fi
for n in "${@:-1000000}"; do
  db=siuss_$n
  $PSQL -c "CREATE DATABASE $db"
  cat > "$WORK/snodo.yaml" <<YAML
connections:
  store:
    postgres: { host: 127.0.0.1, port: $PORT, database: $db, user: postgres, password: "\${env:SNODO_PG_PASSWORD}" }
  flowlog:
    sqlite: { path: $WORK/flowlog_$n.db }
flow_log:
  connection: flowlog
YAML
  $SNODO --config "$WORK/snodo.yaml" store migrate >/dev/null
  persons=$((n / 2))
  # Persons with valid codici fiscali (the generator's algorithm), then interventions and
  # assessments by generate_series.
  python3 - "$persons" > "$WORK/persons.csv" <<'PY'
import datetime as dt, random, sys
sys.path.insert(0, "scripts")
import gen_legacy_csv as g
rng = random.Random(1)
names = ["ROSSI", "BIANCHI", "VERDI", "RUSSO", "FERRARI", "ESPOSITO", "ROMANO", "COLOMBO"]
first = [("MARIA", True), ("LUIGI", False), ("ANNA", True), ("GIUSEPPE", False)]
for i in range(1, int(sys.argv[1]) + 1):
    s, (f, fem) = rng.choice(names), rng.choice(first)
    b = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(30000))
    print(f"{i},GE,p{i},bench,{i},{g.build_cf(s, f, b, fem, 'D969')},{s},{f},{'F' if fem else 'M'},{b},D969,100,D969")
PY
  $PSQL -d "$db" -c "\copy persona (id, ente, chiave, source_system, source_key, codice_fiscale, cognome, nome, sesso, data_nascita, comune_nascita, cittadinanza, comune_residenza) FROM '$WORK/persons.csv' WITH (FORMAT csv)"
  $PSQL -d "$db" <<SQL
INSERT INTO intervento_catalogo (id, ente, source_system, source_key, codice)
VALUES (1, 'GE', 'bench', 'ADA01', 'ADA01'), (2, 'GE', 'bench', 'CEC01', 'CEC01');
INSERT INTO intervento (id, ente, source_system, source_key, persona_id, catalogo_id, protocollo_domanda,
                        data_inizio, data_fine, importo, periodo_erogazione, importo_mensile, quota_ente, annullato)
SELECT g, 'GE', 'bench', 'i' || g, (g + 1) / 2, 1 + g % 2, 'GE-2025-' || g, DATE '2025-02-01', DATE '2025-12-31',
       CASE WHEN g % 2 = 1 THEN 500.00 END, CASE WHEN g % 2 = 0 THEN 11 END,
       CASE WHEN g % 2 = 0 THEN 350.00 END, 300.00, false
FROM generate_series(1, $n) g;
INSERT INTO valutazione_sina (id, ente, source_system, source_key, persona_id, data_valutazione, mobilita,
       attivita_vita_quotidiana, disturbi_cognitivi, disturbi_comportamentali, necessita_cure_sanitarie,
       area_reddituale, area_supporto, fonte_valutazione, strumento_valutazione, invalidita_civile, necessita_interventi)
SELECT g, 'GE', 'bench', 's' || g, g, DATE '2025-01-10', '2', '2', '1', '1', '2', '2', '2', '1', '1', '1,3', 'A1.02'
FROM generate_series(1, $persons, 3) g;
ANALYZE;
SQL
  $SNODO --config "$WORK/snodo.yaml" run pipelines/siuss/mappature.yaml >/dev/null
  # A city's store is not loaded the minute before the flow runs: the freshly generated
  # tables are vacuumed (hint bits, visibility map) and checkpointed first, so that neither
  # side of the comparison pays for the generation, nor does autovacuum run during the first.
  $PSQL -d "$db" -c "VACUUM (FREEZE, ANALYZE)" -c "CHECKPOINT" >/dev/null
  sed -e "s#dir: out/siuss#dir: $WORK/out#; s#path: out/siuss/controllo-ps.txt#path: $WORK/out/controllo.txt#" \
    -e "${BATCH_SIZE:+s#^batch_size: .*#batch_size: $BATCH_SIZE#}" \
    pipelines/siuss/ps_psa.yaml > "$WORK/ps.yaml"
  if [ -n "${AB:-}" ]; then
    # AB="BINARY_A BINARY_B": the two binaries run alternately on this store, PAIRS times
    # (default 3), with the ledger, the flow numbers and the output emptied before each run.
    # On a shared machine whose speed drifts within the hour, alternating runs are the
    # comparison that holds. The idle CPU is the machine's (both cores) during the run.
    for _ in $(seq "${PAIRS:-3}"); do
      for bin in $AB; do
        run_once "$bin"
        printf '%s prestazioni, %s: %s s, %d MB, idle CPU %s s\n' "$n" "$bin" "$secs" $((kb / 1024)) "$idle"
      done
    done
    continue
  fi
  if [ -n "${STATS:-}" ]; then
    $PSQL -d "$db" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
  fi
  snodo_secs=() snodo_kb=() copy_secs=()
  for r in $(seq "${REPEAT:-3}"); do
    # PROFILE=1 records a perf profile of the last run in $WORK/perf-N.data (slower; for analysis).
    wrap=()
    [ -n "${PROFILE:-}" ] && [ "$r" = "${REPEAT:-3}" ] && wrap=(perf record -F 499 -g -o "$WORK/perf-$n.data" --)
    run_once "${wrap[@]}" "$SNODO"
    snodo_secs+=("$secs") snodo_kb+=("$kb")
  done
  if [ -n "${STATS:-}" ]; then
    echo "PostgreSQL statements of the runs at $n, by total time (ms):" >&2
    $PSQL -d "$db" -F ' | ' -c "SELECT round(total_exec_time) AS total_ms, calls, round(mean_exec_time::numeric, 2) AS mean_ms,
        left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        ORDER BY total_exec_time DESC LIMIT 10" >&2
  fi
  query=$(grep -v '^--' pipelines/siuss/prestazioni.sql | tr '\n' ' ')
  for _ in $(seq "${REPEAT:-3}"); do
    start=$(date +%s.%N)
    $PSQL -d "$db" -c "\copy ($query ORDER BY persona_id, intervento_id) TO '$WORK/export.csv' WITH (FORMAT csv, HEADER)"
    copy_secs+=("$(python3 -c "import time;print(round(time.time()-$start,2))")")
  done
  if [ -n "${FLOOR:-}" ]; then
    # The last run's ledger rows and file are still there (the ledger is emptied before a
    # run, not after it).
    cols="ente, tipo, chiave, in_invio_hash, in_invio_record, in_invio_operazione, in_invio_flusso"
    $PSQL -d "$db" -c "\copy (SELECT $cols FROM siuss_invio) TO '$WORK/ledger.bin' WITH (FORMAT binary)" \
      -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS ledger_floor" -c "CREATE TABLE ledger_floor (LIKE siuss_invio INCLUDING ALL)"
    floor_copy=()
    for _ in $(seq "${REPEAT:-3}"); do
      $PSQL -d "$db" -c "TRUNCATE ledger_floor" -c "CHECKPOINT" >/dev/null
      start=$(date +%s.%N)
      $PSQL -d "$db" -c "\copy ledger_floor ($cols) FROM '$WORK/ledger.bin' WITH (FORMAT binary)"
      floor_copy+=("$(python3 -c "import time;print(round(time.time()-$start,2))")")
    done
    $PSQL -d "$db" -c "DROP TABLE ledger_floor" >/dev/null
    rm -f "$WORK/ledger.bin"
    xml=$(ls "$WORK"/out/*.xml)
    floor_lint=()
    for _ in $(seq "${REPEAT:-3}"); do
      /usr/bin/time -f "%U %S" -o "$WORK/time" xmllint --noout --stream --schema specs/siuss/PS_PSA_SINA201812.xsd "$xml" 2>/dev/null
      floor_lint+=("$(awk '{print $1 + $2}' "$WORK/time")")
    done
    python3 - "$n" "${copy_secs[*]}" "${floor_copy[*]}" "${floor_lint[*]}" <<'PY'
import statistics, sys
n = int(sys.argv[1])
export, ledger, lint = (statistics.median(float(x) for x in a.split()) for a in sys.argv[2:5])
total = export + ledger + lint
print(f"floor at {n:,}: psql export {export:.1f} s, ledger rows by one COPY {ledger:.1f} s, "
      f"xmllint --stream {lint:.1f} s of CPU: {total:.1f} s of work before snodo renders a byte; "
      f"two cores within the target (2 x {export:.1f} s) give {4 * export:.1f} s of CPU, "
      f"{4 * export - total:.1f} s ({(4 * export - total) / n * 1e6:.1f} us per prestazione) left "
      "for snodo's own work and the ledger lookups")
PY
  fi
  python3 - "$n" "${snodo_secs[*]}" "${snodo_kb[*]}" "${copy_secs[*]}" <<'PY'
import statistics, sys
n = int(sys.argv[1])
snodo = [float(x) for x in sys.argv[2].split()]
kb = max(int(x) for x in sys.argv[3].split())
copy = [float(x) for x in sys.argv[4].split()]
s, c = statistics.median(snodo), statistics.median(copy)
span = lambda xs: f"{min(xs):.1f}–{max(xs):.1f}"
print(f"| {n:,} | {s:.1f} s ({span(snodo)}) | {kb // 1024} MB | {c:.1f} s ({span(copy)}) | {s / c:.1f}× |")
PY
  [ -n "${KEEP:-}" ] || rm -rf "$WORK/out" "$WORK/export.csv" "$WORK/persons.csv"
done
