#!/usr/bin/env bash
# Set up .venv (first run, or after pyproject.toml changed) and run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv test
exec .venv/bin/python -m pytest -q "$@"
