#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser tests (tests/browser/) when either
# is missing; `make test` runs it first. Idempotent and quiet: nothing to do when /usr/bin/chromium
# and /usr/bin/chromedriver are there, and apt's output is shown only if it fails. Needs root (CI
# and the dev machines run as root). The tests hand both paths to Selenium, which therefore never
# downloads a browser or a driver of its own.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/browser.sh: chromium or chromedriver is missing; as root run" \
       "apt-get install chromium chromium-driver" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
    >"$log" 2>&1; then
  cat "$log" >&2
  echo "scripts/browser.sh: installing chromium and chromium-driver failed" >&2
  exit 1
fi
for binary in /usr/bin/chromium /usr/bin/chromedriver; do
  [ -x "$binary" ] || { echo "scripts/browser.sh: $binary is missing after the install" >&2; exit 1; }
done
