#!/usr/bin/env bash
# Makes sure the two services taskchat needs answer on this machine, starting (and on a
# machine without them, installing) what is missing, then creates the project database:
#   - PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres)
#   - NATS with JetStream on 127.0.0.1:4222 (nats-server 2.9 or newer)
#   - pg_stat_statements preloaded in PostgreSQL (the chat bench counts SQL statements
#     per turn with it); turning it on restarts the cluster once
# Used by `make` and by .ci/run. Safe to run again: it only acts on what is missing.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
NATS_HOST=${NATS_HOST:-127.0.0.1}
NATS_PORT=${NATS_PORT:-4222}
DATABASE_NAME=${DATABASE_NAME:-taskchat}

log() { printf 'services: %s\n' "$*" >&2; }

apt_updated=false
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "missing $*; install it (as root: apt-get install $*) and run again"
    exit 1
  fi
  if ! $apt_updated; then
    apt-get update -qq >/dev/null
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  log "$what did not come up"
  return 1
}

postgres_ready() { pg_isready -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER"; }

ensure_postgres() {
  command -v pg_isready >/dev/null || apt_install postgresql-client
  if postgres_ready; then return; fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "installing PostgreSQL"
    apt_install postgresql
    local conf
    conf=/etc/postgresql/$(ls /etc/postgresql | sort -V | tail -1)/main
    # Local development and CI only: trust connections from this machine.
    sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(local\s+all\s+postgres\s+)\S+/\1trust/' \
      "$conf/pg_hba.conf"
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  wait_for "PostgreSQL on $PGHOST:$PGPORT" postgres_ready
}

# pg_stat_statements only counts when it is in shared_preload_libraries, which takes a
# server restart. Done once per machine; other libraries already preloaded are kept.
ensure_pg_stat_statements() {
  local psql_su=(psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -tAc)
  local preload
  preload=$("${psql_su[@]}" "SHOW shared_preload_libraries")
  case ",${preload// /}," in *,pg_stat_statements,*) return ;; esac
  local version
  version=$("${psql_su[@]}" "SHOW server_version_num")
  version=$((version / 10000))
  if [ ! -e "$(pg_config_libdir "$version")/pg_stat_statements.so" ]; then
    apt_install "postgresql-contrib"
  fi
  log "adding pg_stat_statements to shared_preload_libraries (restarts PostgreSQL $version)"
  "${psql_su[@]}" "ALTER SYSTEM SET shared_preload_libraries = '${preload:+$preload,}pg_stat_statements'" >/dev/null
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  wait_for "PostgreSQL on $PGHOST:$PGPORT" postgres_ready
}

pg_config_libdir() { # major version
  if [ -d "/usr/lib/postgresql/$1/lib" ]; then
    echo "/usr/lib/postgresql/$1/lib"
  else
    pg_config --pkglibdir 2>/dev/null || echo /nonexistent
  fi
}

ensure_nats() {
  if port_open "$NATS_HOST" "$NATS_PORT"; then return; fi
  if [ ! -x /usr/sbin/nats-server ]; then
    log "installing nats-server"
    apt_install nats-server
  fi
  log "starting nats-server with JetStream"
  mkdir -p /var/lib/nats-server /var/log
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a "$NATS_HOST" -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for "NATS on $NATS_HOST:$NATS_PORT" port_open "$NATS_HOST" "$NATS_PORT"
}

ensure_database() {
  command -v psql >/dev/null || apt_install postgresql-client
  if ! psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DATABASE_NAME'" | grep -q 1; then
    log "creating database $DATABASE_NAME"
    psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE \"$DATABASE_NAME\""
  fi
}

ensure_postgres
ensure_pg_stat_statements
ensure_nats
ensure_database
log "PostgreSQL on $PGHOST:$PGPORT (database $DATABASE_NAME) and NATS on $NATS_HOST:$NATS_PORT are up"
