#!/usr/bin/env bash
# Makes sure the Python tools the system tests drive (the OpenAI Agents SDK and
# schemathesis, pinned in tests/python/requirements.txt) are installed in one venv:
# $TASKCHAT_VENV, by default $HOME/.cache/taskchat/venv. Used by `make test` and by
# .ci/run. Safe to run again: when the venv was built from the same requirements and
# Python, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${TASKCHAT_VENV:-$HOME/.cache/taskchat/venv}
REQUIREMENTS=tests/python/requirements.txt
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
  log "up to date in $VENV"
  exit 0
fi

log "installing $REQUIREMENTS into $VENV"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
echo "$wanted" >"$stamp"
log "installed: $("$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -iE '^(openai-agents|schemathesis)==' | tr '\n' ' ')"
