#!/usr/bin/env bash
# The test command of the README: installs the test dependencies (pip requirements, Debian's chromium, the
# frontend's locked npm packages), then runs the Python suite and the frontend suite (node + headless Chromium).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "run_tests.sh: Debian's chromium is needed for the browser tests: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
(cd frontend && npm ci --no-audit --no-fund --loglevel=error)
bash frontend/run_tests.sh
python -m pytest "$@"
