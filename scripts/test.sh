#!/usr/bin/env bash
# Set up (idempotent) and run the tests. Fast suite by default; `--full` adds the slow end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl} WANDB_MODE=disabled
marker=(-m "not slow")
if [ "${1:-}" = "--full" ]; then marker=(); shift; fi
exec .venv/bin/python -m pytest "${marker[@]}" "$@"
