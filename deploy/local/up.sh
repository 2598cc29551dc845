#!/usr/bin/env bash
# `make up`: builds the five taskchat binaries and starts the whole stack as local
# processes against the local NATS and PostgreSQL, then waits until the gateway is
# ready and prints the URLs, a demo token and a curl command to paste.
#
#   gateway       http://127.0.0.1:8080   (GATEWAY_LISTEN)
#   task-service  http://127.0.0.1:8001   (TASK_SERVICE_LISTEN; MCP at /mcp)
#   projection    NATS only
#   agent-worker  NATS only; the model server named by its settings
#   offline-llm   http://127.0.0.1:8089   (OFFLINE_LLM_LISTEN), only when no provider
#                 is configured (OPENAI_API_KEY, GEMINI_API_KEY or LLM_BASE_URL)
#
# The environment reaches every service, so `make up OPENAI_API_KEY=sk-…` or
# `AUTH_JWT_SECRET=… make up` configure them (each service's --help lists its
# variables). Logs go to .run/logs/<service>.log, process ids to .run/pids/.
# Running it again restarts the stack with freshly built binaries; `make down` stops it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CARGO=${CARGO:-cargo}
RUN_DIR=$ROOT/.run
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-120}
# A local stack signs people in on the web page by name; the gateway's own default is
# off, and AUTH_DEV_LOGIN=false make up keeps it off.
export AUTH_DEV_LOGIN=${AUTH_DEV_LOGIN:-true}

GATEWAY_ADDR=${GATEWAY_LISTEN:-127.0.0.1:8080}
TASK_SERVICE_ADDR=${TASK_SERVICE_LISTEN:-127.0.0.1:8001}
OFFLINE_LLM_ADDR=${OFFLINE_LLM_LISTEN:-127.0.0.1:8089}
# The addresses other processes dial (a service listening on 0.0.0.0 is reached on 127.0.0.1).
dial() { local addr=$1; echo "${addr/#0.0.0.0:/127.0.0.1:}"; }
GATEWAY_URL=http://$(dial "$GATEWAY_ADDR")
TASK_SERVICE_URL=http://$(dial "$TASK_SERVICE_ADDR")
OFFLINE_LLM_URL_BASE=http://$(dial "$OFFLINE_LLM_ADDR")

log() { printf 'up: %s\n' "$*" >&2; }

started=()

# Shows the end of each started service's log, stops what was started, and exits.
fail() {
  log "$*"
  for name in "${started[@]}"; do
    printf '\n----- last lines of %s -----\n' "$LOG_DIR/$name.log" >&2
    tail -n 30 "$LOG_DIR/$name.log" >&2 || true
  done
  printf '\n' >&2
  "$ROOT/deploy/local/down.sh" >&2 || true
  log "the stack did not come up; the full logs are in $LOG_DIR"
  exit 1
}

# A setting counts only when it is not blank (compose files set KEY="" to mean off).
given() { [ -n "${!1:-}" ] && [ -n "$(printf '%s' "${!1}" | tr -d '[:space:]')" ]; }

port_open() { local addr; addr=$(dial "$1"); (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; }

# Whether a started service still runs (not exited, not a zombie awaiting this script).
alive() {
  local pid stat
  pid=$(cat "$PID_DIR/$1.pid" 2>/dev/null) || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}

start() { # name, args...
  local name=$1; shift
  : >"$LOG_DIR/$name.log"
  # nohup: the services outlive this script and the terminal it ran in.
  nohup "$BIN_DIR/$name" "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/$name.pid"
  started+=("$name")
  log "started $name (pid $!, log $LOG_DIR/$name.log)"
}

wait_http() { # name, url
  local name=$1 url=$2 deadline=$((SECONDS + READY_TIMEOUT_SECS))
  while ((SECONDS < deadline)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    for service in "${started[@]}"; do
      alive "$service" || fail "$service exited during start-up"
    done
    sleep 0.5
  done
  fail "$name did not answer $url within ${READY_TIMEOUT_SECS}s"
}

command -v curl >/dev/null || { log "curl is needed to check the services; install it and run again"; exit 1; }

"$ROOT/deploy/local/services.sh"

if compgen -G "$PID_DIR/*.pid" >/dev/null; then
  log "stopping the stack a previous make up started"
  "$ROOT/deploy/local/down.sh"
fi

if given OPENAI_API_KEY || given GEMINI_API_KEY || given LLM_BASE_URL; then
  offline=false
else
  offline=true
fi

addrs=("$GATEWAY_ADDR" "$TASK_SERVICE_ADDR")
$offline && addrs+=("$OFFLINE_LLM_ADDR")
for addr in "${addrs[@]}"; do
  if port_open "$addr"; then
    log "$addr is already in use by another program (ss -ltnp shows which); stop it or set GATEWAY_LISTEN / TASK_SERVICE_LISTEN / OFFLINE_LLM_LISTEN"
    exit 1
  fi
done

log "building the release binaries (the first build takes several minutes)"
"$CARGO" build --release -p gateway -p agent-worker -p task-service -p projection -p offline-llm

mkdir -p "$LOG_DIR" "$PID_DIR"
trap 'fail "interrupted"' INT TERM

# agent-worker asks task-service (and the model server) for the tools at start-up,
# so those come first.
start task-service
start projection
if $offline; then
  start offline-llm
  wait_http offline-llm "$OFFLINE_LLM_URL_BASE/healthz"
  export OFFLINE_LLM_URL=${OFFLINE_LLM_URL:-$OFFLINE_LLM_URL_BASE/v1}
fi
wait_http task-service "$TASK_SERVICE_URL/healthz"
export TASK_SERVICE_MCP_URL=${TASK_SERVICE_MCP_URL:-$TASK_SERVICE_URL/mcp}
# Deleting a task waits for the person's approval on the page (empty it to turn off).
export AGENT_CONFIRM_TOOLS=${AGENT_CONFIRM_TOOLS-delete_task}
start agent-worker
start gateway
wait_http gateway "$GATEWAY_URL/readyz"
# The worker has no HTTP port: make sure it is still running after its start-up.
alive agent-worker || fail "agent-worker exited during start-up"

if given LLM_BASE_URL; then
  model="the OpenAI-compatible server at $LLM_BASE_URL"
elif given OPENAI_API_KEY; then
  model="OpenAI"
elif given GEMINI_API_KEY; then
  model="Gemini"
else
  model="offline-llm at $OFFLINE_LLM_URL_BASE (a rule-based stand-in, not a language model; set OPENAI_API_KEY for a real one)"
fi

trap - INT TERM
# Without dev mode or AUTH_JWT_SECRET (an identity provider's tokens only) there is no
# secret to mint a demo token with.
if ! token=$("$BIN_DIR/gateway" token --user demo --ttl 24h 2>/dev/null); then
  token="(none: no AUTH_JWT_SECRET and no dev mode; use a token of your identity provider)"
fi

cat <<EOF

taskchat is up.
  Web chat   $GATEWAY_URL/   (dev login: $AUTH_DEV_LOGIN)
  HTTP API   $GATEWAY_URL/api/{user_id}/chat   (description: $GATEWAY_URL/openapi.json)
  MCP tools  $TASK_SERVICE_URL/mcp
  Model      $model
  Logs       $LOG_DIR/
  Stop with  make down

A token for user "demo" (valid 24 hours):
  $token

Try it:
  curl -sS $GATEWAY_URL/api/demo/chat -H 'Authorization: Bearer $token' -H 'Content-Type: application/json' -d '{"message": "Add a task to buy groceries"}'

EOF
