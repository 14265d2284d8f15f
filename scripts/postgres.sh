#!/usr/bin/env bash
# PostgreSQL for Cove's lexical index, the way `chroma run` is for the dense side: Debian's
# postgresql package, one cluster in a folder of your choosing, listening on loopback only, with a
# password made at first start. Point every Cove instance at it with the URL this prints:
#
#   scripts/postgres.sh start [DATA_DIR] [PORT]   # prints COVE_LEXICAL__POSTGRES_URL=postgresql://...
#   scripts/postgres.sh stop  [DATA_DIR]
#   scripts/postgres.sh url   [DATA_DIR] [PORT]
#
# DATA_DIR defaults to $COVE_HOME/postgres (~/.cove/postgres), PORT to 5433. Run as root, the server
# runs as the `postgres` user (PostgreSQL refuses root): DATA_DIR's parents must let it through.
set -euo pipefail
command="${1:-start}"
data="${2:-${COVE_HOME:-$HOME/.cove}/postgres}"
port="${3:-5433}"

bin=""
for v in 17 16 15; do
  [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ] && { bin="/usr/lib/postgresql/$v/bin"; break; }
done
if [ -z "$bin" ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $SUDO apt-get install -y -q postgresql >/dev/null || { $SUDO apt-get update -q && $SUDO apt-get install -y -q postgresql >/dev/null; }
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

as_owner() {  # run a PostgreSQL program as the data folder's owner (never as root)
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() {
  printf 'postgresql://cove:%s@127.0.0.1:%s/cove\n' "$(cat "$data/cove-password")" "$port"
}

case "$command" in
  start)
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$data"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$data"
      chmod 700 "$data"
      password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
      pwfile=$(mktemp)
      printf '%s\n' "$password" >"$pwfile"
      [ "$(id -u)" -eq 0 ] && chown postgres "$pwfile"
      as_owner "$bin/initdb" -D "$data" -U cove --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 >/dev/null
      rm -f "$pwfile"
      umask 077
      printf '%s\n' "$password" >"$data/cove-password"
      [ "$(id -u)" -eq 0 ] && chown postgres "$data/cove-password"
      as_owner "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=127.0.0.1 -p $port -k $data" -l "$data/server.log" -w start >/dev/null
      PGPASSWORD="$password" "$bin/psql" -h 127.0.0.1 -p "$port" -U cove -d postgres -qc "CREATE DATABASE cove" >/dev/null
    elif ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=127.0.0.1 -p $port -k $data" -l "$data/server.log" -w start >/dev/null
    fi
    echo "COVE_LEXICAL__POSTGRES_URL=$(url)"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null && echo "stopped"
    ;;
  url)
    url
    ;;
  *)
    echo "usage: scripts/postgres.sh start|stop|url [DATA_DIR] [PORT]" >&2
    exit 2
    ;;
esac
