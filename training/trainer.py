"""The one trainer, for every policy: AdamW + cosine schedule with warm-up, EMA, gradient clipping, atomic
training-state checkpoints with exact resume, periodic and final simulator evaluation, wandb logging.

Outputs under ``output_dir``::

    train_state.pt        resume state (model, EMA, optimizer, scheduler, step, RNG), rewritten atomically
    policy/               portable checkpoint of the EMA weights (what eval, export and deploy load)
    eval/eval_info.json   final evaluation of ``policy/`` on fixed seeds (+ videos)
    metrics.jsonl         one JSON line per log interval (cut back to the resumed step on resume)
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ema_pytorch import EMA

from core.atomic_write import write_text
from core.errors import MfpError
from policies.checkpoint import save_policy
from policies.factory import build_policy
from training import distributed
from training.config import TrainConfig
from training.evaluation import evaluate_checkpoint
from training.provenance import code_version
from training.run_log import METRICS_FILE, RunLogger, rewind_metrics
from training.state import (
    STATE_FILE,
    TrainStateError,
    load_train_state,
    restore_rng_state,
    rng_state,
    save_train_state,
    untouched_global_rng,
)
from training.tasks import TaskData, load_task_data

POLICY_DIR = "policy"


def is_run_dir(path: Path) -> bool:
    """True for a directory a training run made (hydra's .hydra/, the run's config.json or training state), or one
    holding only the log of whatever launched the run (a benchmark's): a run writes there without overwriting."""
    if not path.is_dir():
        return False
    made = any((path / name).exists() for name in (".hydra", "config.json", STATE_FILE))
    return made or all(p.is_file() and p.suffix == ".log" for p in path.iterdir())


class TrainingError(MfpError, RuntimeError):
    pass


def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        "obs": {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch["obs"].items()},
        "action": torch.as_tensor(batch["action"]).to(device, non_blocking=True),
    }


class Trainer:
    """Owns the run: ``Trainer(cfg).fit()`` trains to ``cfg.num_steps`` and returns a summary dict."""

    def __init__(self, cfg: TrainConfig, data: TaskData | None = None) -> None:
        self.cfg = cfg
        self.code = code_version()  # now: the tree can change while a long run trains with the code it imported
        self.out = Path(cfg.output_dir)
        self.device = distributed.resolve_device(cfg.device)
        self.eval_device = (
            distributed.resolve_device(cfg.eval.device, "eval.device") if cfg.eval.device else self.device
        )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and bare "cuda" tensors use the current device
        distributed.init(cfg.device)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.np_rng = seed_everything(cfg.seed + distributed.rank())

        # Everything about the data is checked before any training starts.
        self.data = data if data is not None else load_task_data(cfg.task, cfg.policy, cfg.seed, cfg.val_ratio)
        self.shape_meta = self.data.shape_meta
        stats = self.data.train.stats()

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.policy = build_policy(cfg.policy, self.shape_meta, stats).to(self.device)
        distributed.broadcast_parameters(self.policy)
        self.ema = EMA(
            self.policy,
            ema_model=lambda: build_policy(cfg.policy, self.shape_meta, stats).to(self.device),
            beta=cfg.ema_max_decay,
            power=cfg.ema_power,
            update_after_step=0,
            update_every=1,
            include_online_model=False,
        )
        self.ema.ema_model.eval()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.betas[0], cfg.betas[1])
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(cfg.warmup_steps, cfg.num_steps)
        )
        self.step = 0
        self._logger: RunLogger | None = None  # opened by fit()

    # ------------------------------------------------------------------ state
    def state_dict(self, rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything a resume needs; ``rngs`` is every rank's RNG states (default: this process's alone)."""
        return {
            "step": self.step,
            "model": self.policy.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs if rngs is not None else [rng_state(self.np_rng, self.device)],
            "config": json.dumps(asdict(self.cfg), default=str),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_cfg = json.loads(state["config"])
        for key in ("policy", "task"):
            if saved_cfg[key] != json.loads(json.dumps(asdict(self.cfg), default=str))[key]:
                raise TrainingError(
                    f"cannot resume: the saved run's '{key}' config differs from this one; use the same overrides "
                    f"or another output_dir"
                )
        self.policy.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # a dict: saved before 2026-12-04
        if len(rngs) == distributed.world_size():
            restore_rng_state(rngs[distributed.rank()], self.np_rng, self.device)
        else:
            # Another number of processes than the run was saved with: its sampling cannot continue exactly, so each
            # rank draws fresh streams (distinct per rank and per resume step) instead of all copying rank 0's.
            self.np_rng = seed_everything(self.cfg.seed + distributed.rank() + 7919 * int(state["step"]))
            print(
                f"[train] resuming a run saved by {len(rngs)} process(es) on {distributed.world_size()}: batch and "
                "noise sampling restart from fresh seeds (the run is not bit-identical to an uninterrupted one)"
            )
        self.step = int(state["step"])

    def save_checkpoint(self) -> None:
        # Every rank's RNG states, so that a resumed data-parallel run draws what each rank would have drawn.
        rngs = distributed.all_gather_object(rng_state(self.np_rng, self.device))
        if not distributed.is_main():
            return
        # Policy first: wherever a kill lands, a training state on disk has its policy beside it.
        save_policy(
            self.ema.ema_model,
            self.cfg.policy,
            self.out / POLICY_DIR,
            metadata={"task": asdict(self.cfg.task), "step": self.step, "seed": self.cfg.seed, "code": self.code},
        )
        save_train_state(self.out / STATE_FILE, self.state_dict(rngs))

    def _prepare_output(self) -> None:
        state_file = self.out / STATE_FILE
        if self.cfg.resume:
            try:
                self.load_state_dict(load_train_state(state_file))
            except TrainStateError as e:
                raise TrainingError(str(e)) from e
        elif state_file.exists():
            raise TrainingError(
                f"'{self.out}' already holds a run (step saved in {state_file}); pass resume=true to continue it, "
                f"or choose another output_dir"
            )
        # Every rank must have checked the directory before rank 0 can write a checkpoint into it.
        distributed.barrier()
        self.out.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():
            write_text(self.out / "config.json", json.dumps(asdict(self.cfg), indent=2, default=str))

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: dict[str, Any], diagnostics: bool = False) -> dict[str, float]:
        self.policy.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.mixed_precision):
            loss, metrics = self.policy.compute_loss(to_device(batch, self.device), diagnostics=diagnostics)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss)} at step {self.step}; last good state is in {self.out}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(self.policy)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update()
        self.step += 1
        metrics["grad_norm"] = float(grad_norm)
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        return metrics

    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train until ``cfg.num_steps``; checkpoint every ``checkpoint_every`` steps and at the end."""
        cfg = self.cfg
        self._prepare_output()
        if cfg.resume and distributed.is_main():
            rewind_metrics(self.out / METRICS_FILE, self.step)
        self._logger = RunLogger(self.out, cfg, enabled=distributed.is_main())
        progress = _progress(cfg.num_steps, self.step, enabled=cfg.progress and distributed.is_main())
        t0, steps0 = time.perf_counter(), self.step
        try:
            while self.step < cfg.num_steps:
                batch = self.data.train.sample_batch(self.np_rng, cfg.batch_size)
                diag = cfg.diagnostics_every > 0 and self.step % cfg.diagnostics_every == 0
                metrics = self.train_step(batch, diagnostics=diag)
                if on_step is not None:
                    on_step(self.step, metrics)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}")
                if self.step % cfg.log_every == 0 or diag:
                    metrics["steps_per_s"] = (self.step - steps0) / (time.perf_counter() - t0)
                    self._log(self.step, metrics)
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.num_steps:
                    self.save_checkpoint()
                if cfg.eval.every_steps > 0 and self.step % cfg.eval.every_steps == 0 and self.step < cfg.num_steps:
                    self.save_checkpoint()
                    self.evaluate(cfg.eval.periodic_episodes, f"eval_step{self.step}", videos=0)
        finally:
            if progress is not None:
                progress.close()
        elapsed = time.perf_counter() - t0
        self.save_checkpoint()
        summary = {
            "steps": self.step,
            "train_seconds": elapsed,
            "steps_per_s": (self.step - steps0) / elapsed if elapsed > 0 else float("nan"),
            "policy_dir": str(self.out / POLICY_DIR),
            "code": self.code,
        }
        self._log(self.step, {"train/steps_per_s": summary["steps_per_s"]})
        return summary

    def evaluate(self, episodes: int, name: str = "eval", videos: int | None = None) -> dict[str, Any] | None:
        """Evaluate the saved EMA policy on fixed eval seeds; returns the runner's summary (main rank only).

        Leaves the global RNGs as it found them, so a run with periodic evaluations trains the same weights as one
        without.
        """
        if not distributed.is_main() or episodes <= 0:
            return None
        with untouched_global_rng(self.device):
            info = evaluate_checkpoint(
                self.out / POLICY_DIR,
                episodes=episodes,
                n_workers=self.cfg.eval.workers,
                out_dir=self.out / name,
                n_videos=self.cfg.eval.videos if videos is None else videos,
                max_steps=self.cfg.task.max_episode_steps,
                task=self.cfg.task.env,
                device=str(self.eval_device),
            )
        self._log(self.step, {f"{name}/success_rate": info["aggregated"]["pc_success"] / 100.0})
        for i, video in enumerate(info.get("video_paths", [])):
            if self._logger is not None:
                self._logger.log_video(f"{name}/video_{i}", Path(video), self.step)
        return info

    def _log(self, step: int, metrics: dict[str, Any]) -> None:
        if self._logger is not None:
            self._logger.log(step, metrics)

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
        distributed.shutdown()


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
