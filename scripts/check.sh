#!/usr/bin/env bash
# Static checks (set-up included): ruff lint and format, mypy on the packages, the import-linter layer contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
