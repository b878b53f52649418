#!/bin/bash
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
timeout 200 python3 benchmarks/device/h200_profile_mf.py cuda 2>&1 | grep -v -E "Warning|warn|USDT" | tee $OUT/profile.txt
