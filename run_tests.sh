#!/usr/bin/env bash
# The test command of the README: installs the test dependencies (pip requirements, Debian's chromium, the
# frontend's locked npm packages), then runs the Python suite and the frontend suite (node + headless Chromium).
# Needs nothing outside the repository: the few tests that need real pretrained weights or CIFAR-10 images run
# when SPHERE_VGG_WEIGHTS, SPHERE_INCEPTION_WEIGHTS or SPHERE_CIFAR_SUBSET name those files and skip otherwise.
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
# -rs: one line per skipped test with its reason (e.g. which SPHERE_* variable would enable it); --tb=short: a
# failure inside a library prints its line, not the library function's whole source and docstring; -n auto: one
# pytest-xdist worker per core (at most 4), each with one torch thread, whole files per worker (module fixtures run
# once); pass -n 0 to run in one process
python -m pytest -rs --tb=short -n auto --maxprocesses 4 --dist loadfile "$@"
