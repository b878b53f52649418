#!/usr/bin/env bash
# The main job on a fresh machine: set up, collect scripted demos of the default Meta-World task, train a compact
# one-step MeanFlow policy on point clouds, evaluate it on fixed seeds, print success rate and latency.
# Extra arguments are hydra overrides for `mfp train` (e.g. task.env=drawer-open-v3 policy=meanflow_dispersive).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
exec .venv/bin/mfp train "$@"
