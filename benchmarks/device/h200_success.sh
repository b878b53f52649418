#!/bin/bash
# One lent H200 (15 min): the CPU preset's backbone trained 2x longer (3,000 steps) on the GPU, 12 runs at once
# (3 non-easy tasks x MeanFlow / MeanFlow + dispersive / DDIM-10 / regression, seed 0), evaluated on the CPU cores
# with MuJoCo rendering through the GPU's EGL. Carried: .whl (the wheels the image lacks), .gl (glvnd loaders).
set -o pipefail
STEPS=${STEPS:-3000}
. benchmarks/device/env.sh  # carried loaders and wheels, EGL, shared env
{ nvidia-smi -L; nproc; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } > $OUT/gpu.txt 2>&1
python3 - >> $OUT/gpu.txt 2>&1 <<'PY' || { cat $OUT/gpu.txt; exit 4; }
import time
from envs.metaworld.env import MetaWorldEnv
t = time.perf_counter(); env = MetaWorldEnv("push-v3"); obs, _ = env.reset(seed=0)
print("render probe ok:", {k: getattr(v, "shape", None) for k, v in obs.items()}, f"{time.perf_counter() - t:.1f} s")
PY
cat $OUT/gpu.txt
out=bench/gpu_steps$STEPS
( while sleep 30; do date +%T; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader;
  uptime; tail -qn1 $out/*/*/bench_train.log 2>/dev/null | cut -c1-160; done ) > $OUT/monitor.log 2>&1 &
timeout ${BENCH_TIMEOUT:-520} python3 -m mfp.cli bench success --preset cpu \
  --tasks coffee-pull-v3,push-v3,shelf-place-v3 --methods meanflow,meanflow_dispersive,ddim,regression \
  --steps $STEPS ${SEEDS:+--seeds $SEEDS} --workers 12 --out $out device=cuda torch_threads=1 eval.workers=1 2>&1 | grep -v Warning | tee $OUT/bench.log
cp $out/results.json $out/results.md $out/success.png $OUT/ 2>/dev/null
tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' $out 2>/dev/null
ls -la $OUT
