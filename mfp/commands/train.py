"""`mfp train`: hydra entry point. Composes configs/train.yaml onto :class:`TrainConfig`, trains, evaluates.

Multi-GPU: `torchrun --nproc_per_node=N -m mfp train ...` (the trainer averages gradients explicitly).
Sweeps: `mfp train -m seed=0,1,2 hydra/launcher=joblib_local` (or `slurm`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from core.atomic_write import check_output, write_text
from core.errors import MfpError
from mfp.cli_args import full_errors, omegaconf_message, one_line
from policies.config import REMOVED_SETTINGS
from training import distributed
from training.config import compose_train_config, config_from_hydra
from training.distributed import resolve_device
from training.trainer import Trainer, is_run_dir


@hydra.main(version_base=None, config_path="../../configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        return _train(cfg)
    except MfpError as e:
        # Hydra prints a job's exceptions under a traceback; the project's own errors are one line, exit 2.
        if full_errors():
            raise
        print(one_line("mfp train", e), file=sys.stderr)
        _remove_hydra_leftovers(Path(str(cfg.output_dir)))
        raise SystemExit(2) from None


def _remove_hydra_leftovers(run_dir: Path) -> None:
    """A run that failed before training leaves only what hydra wrote (.hydra/, its log): remove that."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


def _train(cfg: DictConfig) -> float:
    train_cfg = config_from_hydra(cfg)
    trainer = Trainer(train_cfg)
    try:
        summary = trainer.fit()
        if distributed.is_main():
            print(
                f"[train] {summary['steps']} steps in {summary['train_seconds']:.0f} s "
                f"({summary['steps_per_s']:.2f} steps/s); EMA policy at {summary['policy_dir']}"
            )
            info = trainer.evaluate(train_cfg.eval.episodes, "eval")
            if info is not None:
                agg = info["aggregated"]
                summary["eval"] = agg
                print(
                    f"[eval] success {agg['pc_success']:.1f} % over {agg['n_episodes']} episodes "
                    f"(95 % CI {agg['ci95_low'] * 100:.1f}-{agg['ci95_high'] * 100:.1f} %); policy latency per "
                    f"call p50 {agg['latency_ms_p50']:.2f} ms, p99 {agg['latency_ms_p99']:.2f} ms "
                    f"(batch 1, observation history in, action chunk out, inside the eval workers)"
                )
            write_text(trainer.out / "summary.json", json.dumps(summary, indent=2, default=str))
        return float(summary.get("eval", {}).get("pc_success", 0.0))
    finally:
        trainer.close()


def removed_override(argv: list[str]) -> str | None:
    """The message for the first override that sets a policy setting this version removed, if any."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("policy.") and key[len("policy.") :] in REMOVED_SETTINGS:
            return f"'{key}' was removed: {REMOVED_SETTINGS[key[len('policy.') :]]}"
    return None


def preflight(argv: list[str]) -> str | None:
    """Why `mfp train <argv>` cannot start, or None: the overrides must compose onto a valid TrainConfig (hydra would
    print the same under several lines) and its output directory must be new, empty or this run's own. Checked
    before hydra creates anything; sweeps (``-m``) and hydra's own flags are left to hydra."""
    if any(a.startswith("-") or a.startswith(("hydra.", "hydra/")) for a in argv):
        return None
    try:
        cfg = compose_train_config(argv)
        resolve_device(cfg.device, "device")
        if cfg.eval.device:
            resolve_device(cfg.eval.device, "eval.device")
        check_output(cfg.output_dir, [cfg.task.dataset], what="output_dir", ours=is_run_dir, offer_overwrite=False)
    except (HydraException, OmegaConfBaseException, MfpError, ValueError, TypeError) as e:
        return omegaconf_message(e)
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    problem = removed_override(args) or preflight(args)
    if problem is not None:
        print(f"mfp train: {problem}", file=sys.stderr)
        return 2
    if argv is not None:
        sys.argv = ["mfp train", *argv]
    try:
        _hydra_main()
    except SystemExit as e:  # hydra exits on its own errors, the job above on the project's
        return e.code if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    main()
