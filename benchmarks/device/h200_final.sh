#!/bin/bash
# Final GPU run: the shipped profiles (profile=gpu now fp32 + jvp_mode=separate), peak memory per run.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
timeout 230 python3 -m mfp.cli bench policy --device cuda --threads 8 --warmup 5 --steps 30 --calls 100 \
  --cases metaworld-gpu,robomimic-gpu,metaworld-cpu --out $OUT/policy_cuda_final.json 2>&1 | grep -v Warning | tee $OUT/policy_cuda_final.log
