"""Collapse diagnostics of trained policies' condition embeddings on their own demonstrations.

For each training run folder (``mfp train`` output: ``config.json`` and ``policy/``), embeds a fixed random sample
of observation windows of the run's dataset with the saved (EMA) policy and prints one markdown row: mean pairwise
cosine and effective rank as the training log measures them (uncentred), the centred effective rank (how many
directions the spread around the batch mean uses), the mean norm, the norm of the batch mean and the mean pairwise
distance. A high cosine with a high centred rank is a shared offset, not a collapse.

    python -m benchmarks.embedding_diagnostics RUN_DIR [RUN_DIR ...] [--windows 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from demos.dataset import SequenceDataset
from encoders.diagnostics import collapse_metrics
from policies.checkpoint import load_policy

COLUMNS = ("run", "D", "mean cos", "erank", "erank centred", "mean |z|", "|batch mean|", "mean distance")


def embedding_row(run_dir: Path, windows: int, seed: int) -> list[str]:
    """The table row of one run: its policy's embedding of ``windows`` dataset windows drawn with ``seed``."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise SystemExit(f"{run_dir}: no config.json; pass the folder `mfp train` wrote (output_dir)")
    dataset = Path(json.loads(config_file.read_text())["task"]["dataset"])
    if not dataset.exists():
        raise SystemExit(
            f"{run_dir}: its dataset {dataset} is missing; run from the folder it was trained in, "
            "or collect the demos again (`mfp collect`)"
        )
    policy = load_policy(run_dir / "policy").eval()
    data = SequenceDataset(
        dataset,
        policy.shape_meta,
        horizon=policy.horizon,
        n_obs_steps=policy.n_obs_steps,
        n_action_steps=policy.n_action_steps,
    )
    idx = np.random.default_rng(seed).choice(len(data), size=min(windows, len(data)), replace=False)
    obs = torch.utils.data.default_collate([data[int(i)]["obs"] for i in idx])  # {key: (B, To, ...)}
    z = policy.embed(obs).double()
    m = collapse_metrics(z, prefix="z")
    return [
        str(run_dir),
        str(z.shape[1]),
        f"{m['z_mean_cos']:.3f}",
        f"{m['z_erank']:.1f}",
        f"{m['z_erank_centered']:.1f}",
        f"{float(z.norm(dim=1).mean()):.2f}",
        f"{float(z.mean(dim=0).norm()):.2f}",
        f"{m['z_mean_dist']:.2f}",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--windows", type=int, default=256, help="observation windows per run (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window sample (default 0)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for run in args.runs:
        print("| " + " | ".join(embedding_row(run, args.windows, args.seed)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
