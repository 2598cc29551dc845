#!/usr/bin/env bash
# `make down`: stops the services `make up` started, by the process ids it recorded in
# .run/pids/. SIGTERM first (each service finishes its work in flight), SIGKILL after a
# grace period. Safe to run at any time: with nothing running it does nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PID_DIR=$ROOT/.run/pids
GRACE_SECS=${DOWN_GRACE_SECS:-20}

log() { printf 'down: %s\n' "$*" >&2; }

# The front first, so no new work arrives at what is still running.
ORDER=(gateway agent-worker offline-llm projection task-service)

# Whether `pid` is still the running service `name`: a pid may have been reused, and
# an exited child of `make up` lingers as a zombie until it is reaped.
is_service() { # pid, name
  local info stat comm
  info=$(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
  read -r stat comm <<<"$info"
  # The kernel truncates process names to 15 characters.
  [[ $stat != Z* ]] && [ "$comm" = "${2:0:15}" ]
}

stopped_any=false
for name in "${ORDER[@]}"; do
  pidfile=$PID_DIR/$name.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_service "$pid" "$name"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + GRACE_SECS))
    while is_service "$pid" "$name" && ((SECONDS < deadline)); do
      sleep 0.2
    done
    if is_service "$pid" "$name"; then
      log "$name did not stop within ${GRACE_SECS}s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    stopped_any=true
  fi
  rm -f "$pidfile"
done

if $stopped_any; then
  log "stopped"
else
  log "nothing was running"
fi
