#!/bin/bash
# One lent H200 (15 min), two jobs at once:
#  A. the CUDA path of `mfp train` at DP3 size (profile=gpu) under torchrun (one rank: the machine has one GPU, so
#     no process group is made and NCCL is not exercised), SIGKILLed after its step-200 training state, resumed with
#     resume=true to the end, then `mfp eval` of the final EMA policy on CUDA; and a short bf16 (mixed_precision=true)
#     run.
#  B. a third training seed (seed 2) of the gpu-h200-success grid: the CPU preset's backbone at 3,000 steps,
#     3 non-easy tasks x MeanFlow / DDIM-10 / regression, 9 runs sharing the GPU, 50 evaluation episodes each.
# Carried: .whl (the wheels the image lacks), .gl (glvnd loaders).
# Rehearsed on the CPU box first: LOCAL=1 DEV=cpu SMALL=1 PY=.venv/bin/python OUT=/tmp/out bash device_train.sh
set -o pipefail
DEV=${DEV:-cuda}; STEPS=${STEPS:-3000}; TRAIN_STEPS=${TRAIN_STEPS:-300}; OUT=${OUT:-/tmp/out}; mkdir -p $OUT/logs
. benchmarks/device/env.sh  # carried loaders and wheels, EGL, shared env
PY=${PY:-python3}
{ nvidia-smi -L; nproc; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"; } > $OUT/gpu.txt 2>&1
$PY - >> $OUT/gpu.txt 2>&1 <<'PY' || { cat $OUT/gpu.txt; exit 4; }
import time
from envs.metaworld.env import MetaWorldEnv
t = time.perf_counter(); env = MetaWorldEnv("push-v3"); obs, _ = env.reset(seed=0)
print("render probe ok:", {k: getattr(v, "shape", None) for k, v in obs.items()}, f"{time.perf_counter() - t:.1f} s")
PY
cat $OUT/gpu.txt
# --- B: the grid, in the background
grid=bench/gpu_steps${STEPS}_seed2
if [ -z "$SMALL" ]; then
  ( while sleep 30; do date +%T; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader;
    uptime; tail -qn1 $grid/*/*/*/bench_train.log 2>/dev/null | cut -c1-160; done ) > $OUT/logs/monitor.log 2>&1 &
  mon=$!
  timeout ${BENCH_TIMEOUT:-400} $PY -m mfp.cli bench success --preset cpu \
    --tasks coffee-pull-v3,push-v3,shelf-place-v3 --methods meanflow,ddim,regression \
    --steps $STEPS --seeds 2 --workers 9 --out $grid device=$DEV torch_threads=1 eval.workers=1 2>&1 \
    | grep -v Warning > $OUT/bench.log &
  grid_pid=$!
fi
# --- A: torchrun + SIGKILL + resume + eval, DP3 size
run=bench/gpu_train/push
common=(profile=gpu device=$DEV task.env=push-v3 num_steps=$TRAIN_STEPS checkpoint_every=100 eval.every_steps=0
        eval.episodes=0 eval.videos=0 wandb.mode=disabled torch_threads=2 output_dir=$run seed=0)
[ -n "$SMALL" ] && common+=(policy.backbone.down_dims=[64,128,256] batch_size=8)
t0=$(date +%s)
setsid $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m training.train "${common[@]}" > $OUT/logs/train_killed.log 2>&1 &
tr=$!
# SIGKILL the agent and its worker (torchrun starts workers in their own session) at logged step 250 (the last
# training state on disk is step 200's: checkpoint_every=100)
while kill -0 $tr 2>/dev/null; do
  s=$(grep -o '"step": [0-9]*' $run/metrics.jsonl 2>/dev/null | tail -1 | cut -d' ' -f2)
  [ "${s:-0}" -ge 250 ] && { echo "SIGKILL at logged step $s (last training state: step 200), $(( $(date +%s) - t0 )) s"; pkill -9 -f "output_dir=$run seed=0"; break; }
  sleep 2
done | tee $OUT/kill.txt
wait $tr 2>/dev/null; sleep 1; pgrep -af "output_dir=$run seed=0" && echo "STILL RUNNING" | tee -a $OUT/kill.txt
$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m training.train "${common[@]}" resume=true > $OUT/logs/train_resumed.log 2>&1
echo "resume rc=$? total $(( $(date +%s) - t0 )) s" | tee -a $OUT/kill.txt
$PY -m mfp.cli eval task=push-v3 checkpoint=$run/policy n_episodes=${EVAL_EPISODES:-20} seed0=100000 n_workers=2 \
  n_videos=0 device=$DEV progress=false out=$run/eval_cuda > $OUT/logs/eval.log 2>&1; echo "eval rc=$?" >> $OUT/kill.txt
$PY -m training.train "${common[@]}" mixed_precision=true num_steps=60 output_dir=bench/gpu_train/push_bf16 \
  > $OUT/logs/train_bf16.log 2>&1; echo "bf16 rc=$?" >> $OUT/kill.txt
# --- wait for the grid
[ -n "$grid_pid" ] && wait $grid_pid
cp $grid/results.json $grid/results.md $OUT/ 2>/dev/null
[ -n "$mon" ] && kill $mon
tail -n 8 $OUT/logs/*.log | cut -c1-300
tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' bench/gpu_train $grid -C $OUT logs 2>/dev/null
rm -rf $OUT/logs
ls -la $OUT
