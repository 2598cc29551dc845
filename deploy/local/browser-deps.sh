#!/usr/bin/env bash
# Makes sure the headless browser the web page's end-to-end test drives is on this
# machine: Debian's chromium (/usr/bin/chromium) and chromium-driver
# (/usr/bin/chromedriver), installing them with apt-get when missing.
# Used by `make test` and by .ci/run. Safe to run again: it only acts on what is missing.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}

log() { printf 'browser-deps: %s\n' "$*" >&2; }

missing=()
[ -x "$CHROMIUM" ] || missing+=(chromium)
[ -x "$CHROMEDRIVER" ] || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing ${missing[*]}; install it (as root: apt-get install ${missing[*]}) and run again"
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq >/dev/null
  # chromium-driver pins the same version as chromium; install both so they match.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi

# A driver of another major version than the browser refuses every session; say so here
# rather than in a confusing test failure.
browser_major=$("$CHROMIUM" --version 2>/dev/null | grep -oE '[0-9]+' | head -1 || true)
driver_major=$("$CHROMEDRIVER" --version 2>/dev/null | grep -oE '[0-9]+' | head -1 || true)
if [ -z "$browser_major" ] || [ "$browser_major" != "$driver_major" ]; then
  log "chromium (${browser_major:-?}) and chromedriver (${driver_major:-?}) do not match;" \
    "run: apt-get install --only-upgrade chromium chromium-driver"
  exit 1
fi
log "chromium $browser_major and chromedriver are installed"
