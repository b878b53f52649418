"""A run's log: ``metrics.jsonl`` in its output directory always, and wandb (offline by default) unless disabled.

Shared by training and fine-tuning; ``cfg`` is the run's config dataclass (its ``wandb`` section is read, the whole
of it is recorded). A resumed run keeps its wandb run id and rewinds ``metrics.jsonl`` to the step it resumes at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, cast

from core.atomic_write import write_text

METRICS_FILE = "metrics.jsonl"


class RunLogger:
    """metrics.jsonl always; wandb (offline by default) when its mode is not 'disabled'."""

    def __init__(self, out: Path, cfg: Any, enabled: bool = True) -> None:
        self.enabled = enabled
        self.file = open(out / METRICS_FILE, "a") if enabled else None
        self.run = None
        if enabled and cfg.wandb.mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                mode=cast(Literal["online", "offline", "disabled"], cfg.wandb.mode),
                dir=str(out),
                config=asdict(cfg),
                name=out.name,
                resume="allow",
                id=_run_id(out),
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_video(self, key: str, path: Path, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Video(str(path), format="mp4")}, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.run is not None:
            self.run.finish()


def rewind_metrics(path: Path, step: int) -> int:
    """Cut the metrics log back to the resumed ``step``: a killed run logged past its last checkpoint (those steps
    are trained again) and may have left a torn last line. Keeps the whole lines with ``step <= step``, rewritten
    atomically; returns how many lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            keep = int(row["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        write_text(path, "".join(kept))
    return dropped


def _run_id(out: Path) -> str:
    """A stable wandb run id per output_dir, so a resumed run continues the same wandb run."""
    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
