#!/usr/bin/env bash
# Installs the Debian packages the tests drive, when any is missing; `make test` runs it first:
# chromium and chromium-driver for the browser tests (tests/browser/), kcat (librdkafka) as a
# real producer of compressed batches (tests/integration/test_producers.py). Idempotent and
# quiet: nothing to do when the binaries are there, and apt's output is shown only if it fails.
# Needs root (CI and the dev machines run as root). The browser tests hand both browser paths to
# Selenium, which therefore never downloads a browser or a driver of its own.
set -euo pipefail

PACKAGES=(chromium chromium-driver kcat)
BINARIES=(/usr/bin/chromium /usr/bin/chromedriver /usr/bin/kcat)

missing=0
for binary in "${BINARIES[@]}"; do
  [ -x "$binary" ] || missing=1
done
if [ "$missing" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test-tools.sh: a test tool is missing; as root run" \
       "apt-get install ${PACKAGES[*]}" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
    >"$log" 2>&1; then
  cat "$log" >&2
  echo "scripts/test-tools.sh: installing ${PACKAGES[*]} failed" >&2
  exit 1
fi
for binary in "${BINARIES[@]}"; do
  [ -x "$binary" ] || { echo "scripts/test-tools.sh: $binary is missing after the install" >&2; exit 1; }
done
