#!/usr/bin/env bash
# The test command of the README: installs the Python test dependencies, then runs the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements-dev.txt
python -m pytest "$@"
