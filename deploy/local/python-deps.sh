#!/usr/bin/env bash
# Makes sure the Python tools of a requirements file are installed in a venv of their
# own, and prints the venv's path on stdout (everything else goes to stderr).
#
#   deploy/local/python-deps.sh [REQUIREMENTS [VENV]]
#
# By default: the system tests' tools (the OpenAI Agents SDK, schemathesis,
# openai-chatkit; tests/python/requirements.txt) in $TASKCHAT_VENV, by default
# $HOME/.cache/taskchat/venv. `make test` and .ci/run call it that way;
# k8s/check/install.sh calls it for make k8s-check's tools. Safe to run again: when the
# venv was built from the same requirements and Python, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUIREMENTS=${1:-tests/python/requirements.txt}
VENV=${2:-${TASKCHAT_VENV:-$HOME/.cache/taskchat/venv}}
PYTHON=${PYTHON:-python3}

log() { printf 'python-deps: %s\n' "$*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "$PYTHON is not on PATH; install Python 3.10 or newer and run again"
  exit 1
fi

# What the venv was built from: the requirements and the interpreter. A stamp that
# matches means nothing to do; anything else rebuilds the venv from scratch, so a
# removed pin never lingers.
wanted=$({ cat "$REQUIREMENTS"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
stamp="$VENV/.taskchat-requirements"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
  log "$REQUIREMENTS up to date in $VENV"
  echo "$VENV"
  exit 0
fi

log "installing $REQUIREMENTS into $VENV"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV" >&2
# A slow registry is waited for (and retried) rather than failing the build.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --timeout 120 --retries 10 -r "$REQUIREMENTS" >&2
echo "$wanted" >"$stamp"
# The pinned packages as installed (the requirements' names, without comments).
pins=$(grep -oE '^[A-Za-z0-9_.-]+==' "$REQUIREMENTS" | paste -sd'|' -)
log "installed: $("$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -iE "^($pins)" | tr '\n' ' ')"
echo "$VENV"
