#!/bin/bash
# Second GPU run: what makes the MeanFlow step slow on the GPU (JVP pattern, TF32, bf16), flow matching beside it.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
B="python3 -m mfp.cli bench policy --device cuda --threads 8 --warmup 5 --parts train --steps 30 --cases metaworld-gpu,robomimic-gpu,metaworld-cpu"
run() { name=$1; shift; echo "== $name"; timeout 100 "$@" --out $OUT/$name.json 2>&1 | grep -E "steps/s$" | tee $OUT/$name.log; }
run fp32_flow $B --methods flow,meanflow --amp off
run fp32_separate $B --methods meanflow --amp off policy.meanflow.jvp_mode=separate
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
run tf32_primal $B --methods meanflow,ddim --amp off
run tf32_separate $B --methods meanflow --amp off policy.meanflow.jvp_mode=separate
run bf16_separate $B --methods meanflow --amp on policy.meanflow.jvp_mode=separate
