"""`mfp finetune`: online RL fine-tuning of a one-step policy checkpoint in its task's simulator.

    mfp finetune checkpoint=runs/coffee-pull-v3/meanflow-seed0/policy env_steps=200000
    mfp finetune checkpoint=... finetune=steering          # noise-space steering, for slow (image) simulators
    mfp finetune checkpoint=... resume=true                # continue a killed run exactly

Writes a normal policy checkpoint (``<output_dir>/policy``) that `mfp eval`, `mfp export` and `mfp deploy` take,
``metrics.jsonl`` (success against env steps and wall time), the evaluations before and after on the fixed
evaluation seeds, and ``summary.json``.
"""

from __future__ import annotations

import sys

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.errors import MfpError
from mfp.cli_args import full_errors, omegaconf_message, one_line
from training.rl.config import FinetuneConfig
from training.rl.finetune import Finetuner


def _config(cfg: DictConfig) -> FinetuneConfig:
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, FinetuneConfig)
    return obj


@hydra.main(version_base=None, config_path="../../configs", config_name="finetune")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        summary = Finetuner(_config(cfg)).run()
    except MfpError as e:
        if full_errors():
            raise
        print(one_line("mfp finetune", e), file=sys.stderr)
        raise SystemExit(2) from None
    before, after = summary["success_before"], summary["success_after"]
    print(
        f"[finetune] {summary['task']} {summary['method']}: {summary['env_steps']} env steps in "
        f"{summary['wall_s'] / 60:.1f} min; success {before} % -> {after} %; policy at {summary['policy_dir']}"
    )


def preflight(argv: list[str]) -> str | None:
    """Why `mfp finetune <argv>` cannot start (bad overrides, a checkpoint that is not one), before hydra runs."""
    if any(a.startswith("-") or a.startswith(("hydra.", "hydra/")) for a in argv):
        return None
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from policies.checkpoint import read_config

    try:
        with initialize_config_module(config_module="configs", version_base=None):
            cfg = compose(config_name="finetune", overrides=argv, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        read_config(_config(cfg).checkpoint)
    except (HydraException, OmegaConfBaseException, MfpError, ValueError, TypeError) as e:
        return omegaconf_message(e)
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    problem = preflight(args)
    if problem is not None:
        print(f"mfp finetune: {problem}", file=sys.stderr)
        return 2
    if argv is not None:
        sys.argv = ["mfp finetune", *argv]
    try:
        _hydra_main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0
