#!/bin/bash
# One prepared GPU run: whole-policy training throughput and latency (mfp bench policy) on CUDA.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
nproc | tee -a $OUT/gpu.txt
python3 -c "import torch, zarr, hydra, ema_pytorch, numcodecs; print('torch', torch.__version__, torch.cuda.get_device_name(), 'zarr', zarr.__version__)" 2>&1 | tee -a $OUT/gpu.txt || exit 4
B="python3 -m mfp.cli bench policy --device cuda --threads 8 --warmup 5"
timeout 260 $B --cases metaworld-gpu,robomimic-gpu,metaworld-cpu,robomimic-cpu_image --steps 40 --calls 100 \
  --out $OUT/policy_cuda.json 2>&1 | grep -v Warning | tee $OUT/policy_cuda.log
timeout 120 $B --cases metaworld-gpu,robomimic-gpu --methods meanflow,ddim --parts train --amp off --steps 30 \
  --out $OUT/policy_cuda_fp32.json 2>&1 | grep -v Warning | tee $OUT/policy_cuda_fp32.log
