#!/bin/bash
# One lent H200 (15 min): the CPU preset (PointNet + MLP 512x4, 10 demos, 1,500 steps, 50 episodes) over every
# task of Meta-World's Medium, Hard and Very hard groups (13 tasks) x MeanFlow 1-NFE / DDIM-10 / regression, seed 0,
# so that the group averages compared with MP1's are averages over whole groups, not over one task each.
# 13 runs share the GPU; evaluation runs on the CPU cores with MuJoCo rendering through the GPU's EGL.
# The bench is resumable: a second call with the same arguments skips finished runs and resumes the others from
# their last training state. Carried: .whl (the wheels the image lacks), .gl (glvnd loaders).
# Rehearsed on the CPU box first: LOCAL=1 DEV=cpu SMALL=1 PY=.venv/bin/python OUT=/tmp/out bash device_groups.sh
set -o pipefail
DEV=${DEV:-cuda}; OUT=${OUT:-/tmp/out}; PY=${PY:-python3}; mkdir -p $OUT
. benchmarks/device/env.sh  # carried loaders and wheels, EGL, shared env
TASKS=${TASKS:-coffee-pull-v3,hammer-v3,peg-insert-side-v3,soccer-v3,assembly-v3,hand-insert-v3,pick-place-v3,push-v3,disassemble-v3,pick-place-wall-v3,shelf-place-v3,stick-pull-v3,stick-push-v3}
STEPS=${STEPS:-1500}; EPISODES=${EPISODES:-}; WORKERS=${WORKERS:-13}
{ nvidia-smi -L; nproc; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"; } > $OUT/gpu.txt 2>&1
cat $OUT/gpu.txt
# Demos: every task's 10 scripted episodes collected at once (the bench would collect them one task after another).
$PY - "$TASKS" > $OUT/collect.log 2>&1 <<'PY' || { tail -20 $OUT/collect.log; exit 4; }
import sys, time
from concurrent.futures import ProcessPoolExecutor
from training.config import TaskConfig
from training.tasks import ensure_demos

def collect(task: str) -> str:
    t = time.perf_counter()
    path = ensure_demos(TaskConfig(env=task, dataset=f"data/{task}-10demos-512pts.zarr"))
    return f"{path} {time.perf_counter() - t:.0f} s"

tasks = sys.argv[1].split(",")
with ProcessPoolExecutor(len(tasks)) as pool:
    for line in pool.map(collect, tasks):
        print(line, flush=True)
PY
grep -v Warning $OUT/collect.log | grep zarr
out=bench/gpu_groups
( while sleep 30; do date +%T; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader;
  uptime; done ) >> $OUT/monitor.log 2>&1 &
mon=$!
timeout ${BENCH_TIMEOUT:-480} $PY -m mfp.cli bench success --preset cpu --tasks $TASKS \
  --methods meanflow,ddim,regression --steps $STEPS ${EPISODES:+--episodes $EPISODES} --workers $WORKERS --out $out \
  device=$DEV torch_threads=1 eval.workers=1 2>&1 | grep -v Warning > $OUT/bench.log
echo "bench exit: $?" >> $OUT/bench.log
kill $mon 2>/dev/null
tail -40 $OUT/bench.log
cp $out/results.json $out/results.md $out/success.png $OUT/ 2>/dev/null
# Everything but weights and hydra's hydra.yaml (it records this machine's checkout path).
tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' --exclude='hydra.yaml' $out 2>/dev/null
ls -la $OUT
