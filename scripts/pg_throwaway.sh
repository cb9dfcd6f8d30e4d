# Sourced by the benchmark scripts: starts a throwaway PostgreSQL cluster in $WORK/pg on a
# free port, stopped when the script exits. Sets PORT and PSQL. Extra server options can be
# given in PG_OPTS. initdb refuses root: the cluster then runs as the postgres user.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PGDIR=$WORK/pg
mkdir -p "$PGDIR"
as_pg() { if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PGDIR"; runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 ${PG_OPTS:-}" -l "$PGDIR/log" -w start >/dev/null
trap 'as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1 || true' EXIT
PSQL="psql -h 127.0.0.1 -p $PORT -U postgres -v ON_ERROR_STOP=1 -qAt"
