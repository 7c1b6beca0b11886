#!/usr/bin/env bash
# Set up .venv (first run, or after pyproject.toml changed) and run the crash-and-recover demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
exec .venv/bin/python examples/demo.py "$@"
