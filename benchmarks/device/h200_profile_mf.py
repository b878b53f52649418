"""Where a MeanFlow training step spends its GPU time, flow matching beside it (profiler tables to stdout)."""

import pathlib
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from mfp.bench import policy as bench

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
extra = sys.argv[2:]
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
for method, over in (
    ("flow", []),
    ("meanflow", ["policy.meanflow.jvp_mode=separate"]),
    ("meanflow", ["policy.meanflow.jvp_mode=primal"]),
):
    args = bench.parse_args(
        [
            "--device",
            device,
            "--threads",
            "8",
            "--cases",
            "metaworld-gpu",
            "--amp",
            "off",
            "--episodes",
            "4",
            "--episode-len",
            "50",
            *over,
            *extra,
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg = bench.build_trainer("metaworld-gpu", method, args, pathlib.Path(tmp) / "r")

    def step(trainer=trainer, cfg=cfg):
        return trainer.train_step(trainer.data.train.sample_batch(trainer.np_rng, cfg.batch_size))

    for _ in range(3):
        step()
    bench._sync(trainer.device)
    with profile(activities=acts) as prof:
        for _ in range(3):
            step()
        bench._sync(trainer.device)
    print(f"\n===== {method} {over} (3 steps)")
    print(prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60))
    del trainer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
