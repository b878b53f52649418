"""`mfp bench success`: the honest success-rate protocol (DESIGN section 6) over tasks x methods x training seeds.

    mfp bench success --preset cpu --dry-run          # the plan and its estimated time
    mfp bench success --preset cpu                    # run it (resumable: rerun the same command after a kill)
    mfp bench success --preset full --workers 8       # GPU machine: all 50 tasks, 3 seeds, 100 episodes
    mfp bench success --preset cpu --tasks push-v3 --methods meanflow,ddim torch_threads=1   # + hydra overrides
    mfp bench success --preset robomimic_cpu          # robosuite Lift from images (tasks: robomimic/lift, ...)
    mfp bench success --preset multimodal_cpu         # the multimodal suite (tasks: multimodal/detour, ...)

Every run is `mfp train` in its own process (a crash or out-of-memory ends one run, not the benchmark), composed
from configs/train.yaml with the preset's overrides plus ``task.env`` (a Meta-World task) or the ``task`` config
group (a robomimic or multimodal task: ``task=robomimic/lift``, ``task=multimodal/detour``), ``policy``, ``seed``,
``num_steps`` and ``eval.episodes``; the configs are composed here first through the same hydra path, so a bad
override fails before anything trains, and the methods of one task and seed are checked to differ only in the head
and its regularizer.
Each run trains to the same step count and evaluates its final EMA checkpoint on the same fixed evaluation seeds
(``core.seeds.eval_seeds``). A run whose ``summary.json`` and ``eval/eval_info.json`` exist is skipped; a run
killed mid-training resumes from its last training state (``resume=true``). With ``device=cuda`` and several GPUs
visible, the worker slots take the GPUs round-robin (each child sees only its own through ``CUDA_VISIBLE_DEVICES``).

Outputs under ``--out`` (default ``bench/success/<preset>``): ``<task>/<method>/seed<k>/`` (one run each, with
``bench_train.log``), ``results.json`` (every run), ``results.md`` (tables) and ``success.png``, rewritten after
every finished run. Presets are data: ``benchmarks/presets/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import configs
from benchmarks.success_report import MULTIMODAL_GROUP, ROBOMIMIC_GROUP
from core.atomic_write import write_text
from core.errors import MfpError
from envs.metaworld.groups import GROUP_LABELS, GROUPS
from training.config import TrainConfig

PRESET_DIR = Path(__file__).parent / "presets"
POLICY_DIR = Path(configs.__file__).parent / "policy"
# Keys the benchmark sets per run; extra overrides may not touch them (use the CLI flags instead).
OWNED_KEYS = {
    "task": "--tasks",
    "task.env": "--tasks",
    "policy": "--methods",
    "seed": "--seeds",
    "num_steps": "--steps",
    "eval.episodes": "--episodes",
    "output_dir": "--out",
    "resume": "(automatic)",
}
# Config keys that do not change what a run learns or how it is scored (ignored when matching an existing run).
BOOKKEEPING_KEYS = {
    "output_dir",
    "resume",
    "progress",
    "torch_threads",
    "log_every",
    "diagnostics_every",
    "checkpoint_every",
    "wandb",
    "eval.workers",
    "eval.videos",
    "eval.device",
}
# Policy keys allowed to differ between methods: the head, its sampler settings, the regularizer, and the draws
# per observation (regression records 1).
HEAD_KEYS = {"head", "meanflow", "flow", "diffusion", "dispersive", "num_inference_steps", "samples_per_obs"}
# Override keys (or their prefixes) that change what a training step or an episode costs: a preset's time estimate
# was measured on its own model and does not hold for runs with these changed.
COST_KEYS = ("profile", "policy.", "task.", "batch_size", "mixed_precision")
MULTIMODAL_PREFIX = f"{MULTIMODAL_GROUP}/"  # named as their configs: multimodal/detour
ROBOMIMIC_PREFIX = f"{ROBOMIMIC_GROUP}/"  # robomimic tasks are named as their config: robomimic/lift
LOG_FILE = "bench_train.log"
RUN_FILE = "bench_run.json"


class BenchError(MfpError, ValueError):
    """A bad preset, task, method or override, or a run directory that holds a different run."""


# ---------------------------------------------------------------------------------------------------- presets
@dataclass
class Estimate:
    """What --dry-run assumes until runs have finished in --out (their measured rates replace it)."""

    seconds_per_step: float = 0.5
    seconds_per_episode: float = 1.0
    seconds_per_run: float = 30.0  # process start-up, data loading, eval worker start-up
    # CPU threads of the one run, alone on the machine, that measured seconds_per_step; None: never rescaled.
    threads: int | None = None


@dataclass
class Preset:
    description: str = ""
    tasks: list[str] = field(default_factory=list)  # task names, group names (easy, ..., robomimic) or "all"
    methods: list[str] = field(default_factory=list)  # policy config names (configs/policy/*.yaml)
    seeds: list[int] = field(default_factory=lambda: [0])
    episodes: int = 50
    num_steps: int | None = None  # None = the profile's
    overrides: list[str] = field(default_factory=list)  # hydra overrides shared by every run
    estimate: Estimate | None = None

    def __post_init__(self) -> None:
        if not self.tasks or not self.methods or not self.seeds:
            raise BenchError("a preset needs at least one task, method and seed")
        if self.episodes < 1 or (self.num_steps is not None and self.num_steps < 1):
            raise BenchError("episodes and num_steps must be >= 1")


def known_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> Preset:
    """The preset ``benchmarks/presets/<name>.yaml`` as a validated :class:`Preset` (unknown keys fail)."""
    from omegaconf import OmegaConf

    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise BenchError(f"unknown preset '{name}'; known: {', '.join(known_presets())}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Preset), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except BenchError:
        raise
    except Exception as e:  # omegaconf reports unknown keys and wrong types with the key's name
        raise BenchError(f"preset {path}: {e}") from e


def known_methods() -> list[str]:
    return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def check_methods(names: Sequence[str]) -> list[str]:
    known = known_methods()
    unknown = [m for m in names if m not in known]
    if unknown:
        raise BenchError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return list(dict.fromkeys(names))


def robomimic_tasks() -> list[str]:
    """Every robomimic task as the benchmark names it (``robomimic/lift``, ...)."""
    from envs.robosuite.env import TASKS  # robosuite itself is imported only when an env is made

    return [f"{ROBOMIMIC_PREFIX}{t}" for t in TASKS]


def multimodal_tasks() -> list[str]:
    """Every task of the multimodal suite (``multimodal/detour``, ...)."""
    from envs.suites import get_suite

    return get_suite(MULTIMODAL_GROUP).task_names()


def is_multimodal(task: str) -> bool:
    """True for a multimodal task name (``multimodal/<x>``)."""
    return task.startswith(MULTIMODAL_PREFIX)


def is_robomimic(task: str) -> bool:
    """True for a resolved robomimic task name (``robomimic/<x>``)."""
    return task.startswith(ROBOMIMIC_PREFIX)


def check_robomimic_task(name: str) -> str:
    """``robomimic/lift``, ``lift`` or robosuite's ``Lift`` -> ``robomimic/lift``; unknown names list the known."""
    from envs.robosuite.env import is_robosuite_task, task_name

    if not is_robosuite_task(name):
        raise BenchError(f"unknown robomimic task '{name}'; known: {', '.join(robomimic_tasks())}")
    return f"{ROBOMIMIC_PREFIX}{task_name(name)}"


def resolve_tasks(names: Sequence[str]) -> list[str]:
    """Task names, group names (difficulty groups, "robomimic") or "all" (the 50 Meta-World tasks) -> Meta-World v3
    task names and ``robomimic/<x>`` names (unknown names list close or known ones)."""
    from envs.metaworld.env import UnknownTaskError, check_task
    from envs.metaworld.groups import tasks_by_group
    from envs.robosuite.env import is_robosuite_task

    groups = tasks_by_group()
    tasks: list[str] = []
    for name in names:
        if name == "all":
            tasks += [t for g in GROUPS for t in groups[g]]
        elif name in groups:
            tasks += groups[name]
        elif name == ROBOMIMIC_GROUP:
            tasks += robomimic_tasks()
        elif name == MULTIMODAL_GROUP:
            tasks += multimodal_tasks()
        elif is_multimodal(name):
            from envs.suites import UnknownTaskError as SuiteTaskError
            from envs.suites import get_suite

            try:
                tasks.append(get_suite(MULTIMODAL_GROUP).check_task(name))
            except SuiteTaskError as e:
                raise BenchError(str(e)) from e
        elif is_robomimic(name) or is_robosuite_task(name):
            tasks.append(check_robomimic_task(name))
        else:
            try:
                tasks.append(check_task(name))
            except UnknownTaskError as e:
                raise BenchError(f"{e} (robomimic tasks: {', '.join(robomimic_tasks())})") from e
    return list(dict.fromkeys(tasks))


def task_group(task: str) -> str:
    """A resolved task's report group: its Meta-World difficulty, "robomimic" or "multimodal"."""
    from envs.metaworld.groups import difficulty

    if is_multimodal(task):
        return MULTIMODAL_GROUP
    return ROBOMIMIC_GROUP if is_robomimic(task) else difficulty(task)


def task_choice(task: str) -> str | None:
    """The ``task`` config group choice a run needs: ``robomimic/lift`` for a robomimic task (``multimodal/detour``
    likewise), None for Meta-World (the default ``task: metaworld``, where ``task.env`` names the task)."""
    return task if is_robomimic(task) or is_multimodal(task) else None


def check_overrides(overrides: Sequence[str]) -> list[str]:
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item:
            raise BenchError(f"override '{item}' is not key=value")
        if key in OWNED_KEYS:
            raise BenchError(f"'{key}' is set per run by the benchmark; use {OWNED_KEYS[key]} instead")
    return list(overrides)


def parse_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass
class Run:
    task: str
    group: str
    method: str
    seed: int
    out_dir: Path
    overrides: list[str]  # what `mfp train` gets (without resume)
    config: TrainConfig
    state: str = "new"  # new | resume | done


def choice_overrides(choice: str | None, method: str) -> list[str]:
    """The config group selections of one run: its task config (robomimic only) and its policy."""
    return [*([f"task={choice}"] if choice else []), f"policy={method}"]


def compose_configs(
    base: Sequence[str], keys: Sequence[tuple[str | None, str]], extra: Sequence[str]
) -> dict[tuple[str | None, str], Any]:
    """One unresolved hydra composition of configs/train.yaml per (task config choice, method) in ``keys`` (the path
    `mfp train` takes); the choice is None for Meta-World tasks (the default task config)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import training.config  # noqa: F401  (registers the typed schema 'train_schema')

    out = {}
    with initialize_config_module(config_module="configs", version_base=None):
        for choice, method in dict.fromkeys(keys):
            overrides = [*base, *choice_overrides(choice, method), *extra]
            try:
                out[(choice, method)] = compose("train", overrides=overrides)
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                raise BenchError(f"cannot compose `mfp train {' '.join(overrides)}`: {e}") from e
    return out


def run_values(task: str, seed: int, episodes: int, num_steps: int | None, out_dir: Path) -> dict[str, Any]:
    """The plain values the benchmark sets per run (on top of the composition; a robomimic task is its config)."""
    values: dict[str, Any] = {} if task_choice(task) else {"task.env": task}
    values.update({"seed": seed, "eval.episodes": episodes})
    if num_steps is not None:
        values["num_steps"] = num_steps
    return {**values, "output_dir": str(out_dir), "progress": False}


def materialize(composed: Any, values: dict[str, Any]) -> TrainConfig:
    """``composed`` with ``values`` set, resolved into the typed config (what hydra gives for the same overrides)."""
    from omegaconf import OmegaConf

    cfg = composed.copy()
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    try:
        return OmegaConf.to_object(cfg)
    except Exception as e:  # validation in __post_init__ or a bad interpolation
        raise BenchError(f"invalid run config ({', '.join(f'{k}={v}' for k, v in values.items())}): {e}") from e


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    if re.fullmatch(r"[\w./:+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan_runs(
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    episodes: int,
    num_steps: int | None,
    base_overrides: Sequence[str],
    extra: Sequence[str],
    out: Path,
) -> list[Run]:
    """Every (task, method, seed) run with its composed config and its state in ``out``."""
    groups = {task: task_group(task) for task in tasks}
    composed = compose_configs(base_overrides, [(task_choice(t), m) for t in tasks for m in methods], extra)
    runs = []
    for task in tasks:
        choice = task_choice(task)
        for method in methods:
            for seed in seeds:
                out_dir = out / task / method / f"seed{seed}"
                values = run_values(task, seed, episodes, num_steps, out_dir)
                overrides = [
                    *base_overrides,
                    *choice_overrides(choice, method),
                    *(f"{k}={_override_value(v)}" for k, v in values.items()),
                    *extra,
                ]
                config = materialize(composed[(choice, method)], values)
                runs.append(Run(task, groups[task], method, seed, out_dir, overrides, config))
    check_same_backbone(runs)
    for run in runs:
        run.state = run_state(run)
    return runs


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as the trainer writes it to config.json (JSON round trip)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def with_schema_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json with the options added since it was written filled in with their defaults (a run made
    before an option existed ran with that option's default). Unknown keys stay as they are and count as a mismatch."""
    from omegaconf import OmegaConf

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
        return json.loads(json.dumps(OmegaConf.to_container(merged), default=str))
    except Exception:
        return saved


def config_mismatch(planned: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """Dotted keys (outside :data:`BOOKKEEPING_KEYS`) whose values differ between two config dicts."""
    a, b = _flat(planned), _flat(saved)
    skip = tuple(f"{k}." for k in BOOKKEEPING_KEYS)
    return sorted(
        k for k in set(a) | set(b) if k not in BOOKKEEPING_KEYS and not k.startswith(skip) and a.get(k) != b.get(k)
    )


def check_same_backbone(runs: Sequence[Run]) -> None:
    """Within one task and seed, the methods' configs may differ only in :data:`HEAD_KEYS` of the policy."""
    by_key: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        by_key.setdefault((run.task, run.seed), []).append(run)
    for group in by_key.values():
        ref = config_dict(group[0].config)
        for other in group[1:]:
            diff = [
                k
                for k in config_mismatch(ref, config_dict(other.config))
                if not (k.startswith("policy.") and k.split(".")[1] in HEAD_KEYS)
            ]
            if diff:
                raise BenchError(
                    f"methods {group[0].method} and {other.method} differ beyond the head "
                    f"({', '.join(diff)}); the comparison needs one backbone/encoder config"
                )


def run_state(run: Run) -> str:
    """done (summary + eval present), resume (a training state exists) or new; refuses a dir of another run."""
    saved_cfg = _read_json(run.out_dir / "config.json")
    if saved_cfg is not None:
        diff = config_mismatch(config_dict(run.config), with_schema_defaults(saved_cfg))
        if diff:
            raise BenchError(
                f"{run.out_dir} holds a run with other settings ({', '.join(diff)}); pass another "
                f"--out or remove that directory"
            )
    summary = _read_json(run.out_dir / "summary.json")
    if summary is not None and "eval" in summary and _read_json(run.out_dir / "eval" / "eval_info.json") is not None:
        return "done"
    from training.state import STATE_FILE

    return "resume" if (run.out_dir / STATE_FILE).is_file() else "new"


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing or was cut short by a kill."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def nfe(cfg: TrainConfig) -> int:
    """Network evaluations per action chunk at inference (the head's sampler steps)."""
    p = cfg.policy
    if p.num_inference_steps:
        return int(p.num_inference_steps)
    return {
        "meanflow": p.meanflow.num_inference_steps,
        "flow": p.flow.num_inference_steps,
        "ddim": p.diffusion.num_inference_steps,
        "ddpm": p.diffusion.num_train_timesteps,
        "regression": 1,
    }[p.head]


# ---------------------------------------------------------------------------------------------------- running
def train_command(run: Run) -> list[str]:
    resume = ["resume=true"] if run.state == "resume" else []
    return [sys.executable, "-m", "mfp.cli", "train", *run.overrides, *resume]


def visible_gpus() -> list[str]:
    """The GPUs runs may use: ``CUDA_VISIBLE_DEVICES`` as given, else every GPU torch counts."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(workers: int, gpus: Sequence[str]) -> list[str | None]:
    """The GPU (a ``CUDA_VISIBLE_DEVICES`` value) of each worker slot, round-robin; None with fewer than two GPUs
    (nothing to spread). Without this every ``device=cuda`` run of ``--workers N`` would train on GPU 0."""
    if len(gpus) < 2:
        return [None] * workers
    return [gpus[i % len(gpus)] for i in range(workers)]


def execute(run: Run, label: str = "", gpu: str | None = None) -> dict[str, Any]:
    """Train + evaluate one run in a child process (on GPU ``gpu`` alone if given); returns its result (status
    "failed" with the log's tail)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(run)
    log_path = run.out_dir / LOG_FILE
    where = f", GPU {gpu}" if gpu is not None else ""
    print(
        f"[bench] {label}{'resume' if run.state == 'resume' else 'start'} {run.task} {run.method} seed {run.seed} "
        f"(log: {log_path}{where})",
        flush=True,
    )
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')}{where} {' '.join(cmd)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    record = {
        "command": cmd[1:],
        "returncode": rc,
        "wall_seconds": time.perf_counter() - t0,
        "resumed": run.state == "resume",
    }
    write_text(run.out_dir / RUN_FILE, json.dumps(record, indent=2))
    run.state = run_state(run) if rc == 0 else run.state
    if rc != 0 or run.state != "done":
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        return {
            **_identity(run),
            "status": "failed",
            "returncode": rc,
            "error": "\n".join(tail),
            "run_dir": str(run.out_dir),
            "wall_seconds": record["wall_seconds"],
        }
    return collect_result(run)


def _identity(run: Run) -> dict[str, Any]:
    return {"task": run.task, "group": run.group, "method": run.method, "seed": run.seed, "nfe": nfe(run.config)}


def collect_result(run: Run, best_of_periodic: bool = False) -> dict[str, Any]:
    """The result of a finished run, read from its summary.json, eval/eval_info.json and bench_run.json."""
    summary = json.loads((run.out_dir / "summary.json").read_text())
    info = json.loads((run.out_dir / "eval" / "eval_info.json").read_text())
    agg = info["aggregated"]
    record_path = run.out_dir / RUN_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    seeds = info.get("config", {}).get("seeds", [])
    result = {
        **_identity(run),
        "status": "ok",
        "success": float(agg["pc_success"]),
        "n_episodes": int(agg["n_episodes"]),
        "n_success": int(agg["n_success"]),
        "ci95": [100.0 * agg["ci95_low"], 100.0 * agg["ci95_high"]],
        "latency_ms_p50": agg.get("latency_ms_p50"),
        "latency_ms_p99": agg.get("latency_ms_p99"),
        "steps": int(summary["steps"]),
        "train_seconds": float(summary["train_seconds"]),
        "steps_per_s": _finite(summary.get("steps_per_s")),
        "eval_seconds": agg.get("eval_s"),
        "wall_seconds": record.get("wall_seconds"),
        "resumed": bool(record.get("resumed", False)),  # train_seconds then covers only the last session
        "eval_seeds": f"{min(seeds)}..{max(seeds)}" if seeds else None,
        "device": run.config.device,
        "eval_device": run.config.eval.device or run.config.device,
        "run_dir": str(run.out_dir),
        "code": summary.get("code"),  # absent in runs made before it was recorded
    }
    if agg.get("modes"):  # a task whose suite classifies modes
        result["modes"] = agg["modes"]
    if best_of_periodic:
        result.update(best_of_periodic_evals(run.out_dir))
    return result


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def best_of_periodic_evals(run_dir: Path, k: int = 5) -> dict[str, Any]:
    """The papers' secondary metric: mean success of the best ``k`` evaluations made during training.

    The pool is every periodic evaluation (``eval_step<N>/``) plus the final one scored on the periodic evaluations'
    seeds only, so each value comes from the same episodes. Also returns the curve (step, success) it was chosen
    from. Empty when the run has no periodic evaluation."""
    periodic = {}
    for p in run_dir.glob("eval_step*/eval_info.json"):
        try:
            periodic[int(p.parent.name.removeprefix("eval_step"))] = json.loads(p.read_text())
        except ValueError as e:  # a hand-made folder name or a truncated file: name it, never guess
            raise ValueError(f"{p}: not a periodic evaluation of `mfp train` ({e}); move it out of {run_dir}") from e
    if not periodic:
        return {}
    curve = {step: float(info["aggregated"]["pc_success"]) for step, info in periodic.items()}
    seeds = {e["seed"] for e in next(iter(periodic.values()))["per_episode"]}
    final, summary = run_dir / "eval" / "eval_info.json", run_dir / "summary.json"
    if final.is_file() and summary.is_file():
        episodes = [e for e in json.loads(final.read_text())["per_episode"] if e["seed"] in seeds]
        if len(episodes) == len(seeds):
            step = int(json.loads(summary.read_text())["steps"])
            curve[step] = 100.0 * sum(bool(e["success"]) for e in episodes) / len(episodes)
    values = sorted(curve.values(), reverse=True)[:k]
    return {
        "best5_periodic": statistics.fmean(values),
        "n_periodic": len(curve),
        "periodic_curve": [[step, curve[step]] for step in sorted(curve)],
    }


def ensure_task_demos(runs: Sequence[Run]) -> None:
    """Collect each pending task's demos once, here, before runs of that task start (no two runs race for it)."""
    from training.tasks import ensure_demos

    seen: set[str] = set()
    for run in runs:
        if run.state != "done" and run.config.task.dataset not in seen:
            seen.add(run.config.task.dataset)
            ensure_demos(run.config.task)


# ---------------------------------------------------------------------------------------------------- estimates
def rate_key(group: str, method: str) -> tuple[str, str]:
    """Runs share measured rates per suite and method (an image task's step costs far more than a point cloud's)."""
    return (group if group in (ROBOMIMIC_GROUP, MULTIMODAL_GROUP) else "metaworld", method)


def cost_overrides(overrides: Sequence[str]) -> list[str]:
    """The keys among ``overrides`` that change the model or data a preset's time estimate was measured on."""
    keys = (item.split("=", 1)[0].lstrip("+~") for item in overrides)
    return list(dict.fromkeys(k for k in keys if k.startswith(COST_KEYS)))


def measured_rates(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Estimate]:
    """Per :func:`rate_key` (suite, method), the rates its finished (not resumed) runs measured."""
    rates: dict[tuple[str, str], Estimate] = {}
    for key in dict.fromkeys(rate_key(r["group"], r["method"]) for r in results):
        runs = [
            r
            for r in results
            if rate_key(r["group"], r["method"]) == key
            and r.get("status") == "ok"
            and not r.get("resumed")
            and r.get("wall_seconds")
            and r.get("eval_seconds")
        ]
        if runs:
            rates[key] = Estimate(
                seconds_per_step=statistics.fmean(r["train_seconds"] / max(1, r["steps"]) for r in runs),
                seconds_per_episode=statistics.fmean(r["eval_seconds"] / r["n_episodes"] for r in runs),
                seconds_per_run=statistics.fmean(
                    max(0.0, r["wall_seconds"] - r["train_seconds"] - r["eval_seconds"]) for r in runs
                ),
            )
    return rates


def cpu_share_factor(rate: Estimate, torch_threads: int, workers: int, cores: int) -> float:
    """How many times slower a CPU training step is than ``rate`` measured when ``workers`` runs of
    ``torch_threads`` threads each (0: torch's default, one per core) share ``cores``: the step's core-seconds spread
    over the cores one run gets. Never below 1 (these small models do not speed up with more threads than they were
    measured with)."""
    if not rate.threads or rate.threads < 1:
        return 1.0
    threads = torch_threads if torch_threads > 0 else cores
    return max(1.0, rate.threads / min(threads, cores / max(1, workers)))


def estimate_seconds(run: Run, rate: Estimate) -> float:
    if run.state == "done":
        return 0.0
    start = _saved_step(run) if run.state == "resume" else 0
    return (
        rate.seconds_per_run
        + max(0, run.config.num_steps - start) * rate.seconds_per_step
        + run.config.eval.episodes * rate.seconds_per_episode
    )


def _saved_step(run: Run) -> int:
    path = run.out_dir / "policy" / "config.json"
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text()).get("metadata", {}).get("step", 0))


# ---------------------------------------------------------------------------------------------------- outputs
def write_outputs(results: Sequence[dict[str, Any]], out: Path, title: str, meta: dict[str, Any]) -> str:
    """results.json, results.md, success.png and (with periodic evaluations) curves.png under ``out``; returns the
    markdown."""
    from benchmarks.success_report import plot_curves, plot_success, report_markdown, reported_anchors

    out.mkdir(parents=True, exist_ok=True)
    anchors = reported_anchors(results)  # the papers' figures beside a robomimic section (labelled as theirs)
    write_text(
        out / "results.json",
        json.dumps({**meta, **({"reported_anchors": anchors} if anchors else {}), "runs": list(results)}, indent=2),
    )
    markdown = report_markdown(results, title)
    write_text(out / "results.md", markdown)
    if any(r.get("status") == "ok" for r in results):
        plot_success(results, out / "success.png")
        plot_curves(results, out / "curves.png")
    return markdown


def _observation_text(cfg: TrainConfig) -> str:
    """The encoder and observations of a run (point clouds for Meta-World, camera images for robomimic)."""
    e, t = cfg.policy.encoder, cfg.task
    demos = f"{t.n_demos} demos" if t.n_demos is not None else f"every {t.filter_key or 'train'} demo of the file"
    if t.suite == "robomimic":
        crop = "x".join(map(str, e.image_crop_shape))
        return f"encoder images {e.image_trunk} (crop {crop} of {t.image_size}px), obs {t.obs_keys}, {demos}"
    return f"encoder points {e.point_hidden_dims}->{e.point_out_dim}, {t.num_points} points, obs {t.obs_keys}, {demos}"


def describe_plan(
    runs: Sequence[Run],
    rates: dict[tuple[str, str], Estimate],
    fallback: Estimate | None,
    workers: int,
    changed: Sequence[str] = (),
) -> str:
    """The plan as text: shared settings, one line per run with its state, and the estimated time. ``changed``:
    the overrides (keys) that change the model the preset's estimate was measured on."""
    cfg = runs[0].config
    p = cfg.policy
    size = p.backbone.down_dims if p.backbone.type == "unet" else p.backbone.hidden_dim
    counts = {s: sum(r.state == s for r in runs) for s in ("new", "resume", "done")}
    observations = "; ".join(dict.fromkeys(_observation_text(r.config) for r in runs))  # one per suite
    lines = [
        f"{len({r.task for r in runs})} tasks x {len({r.method for r in runs})} methods x "
        f"{len({r.seed for r in runs})} seeds = {len(runs)} runs: {counts['new']} to train, "
        f"{counts['resume']} to resume, {counts['done']} done",
        f"shared: backbone {p.backbone.type} {size}, {observations}, batch {cfg.batch_size}, {cfg.num_steps} steps, "
        f"lr {cfg.lr}, device {cfg.device}, torch_threads {cfg.torch_threads}",
        f"evaluation: final EMA checkpoint, {cfg.eval.episodes} episodes on eval seeds "
        f"{_eval_seed_range(cfg.eval.episodes)}, {cfg.eval.workers} workers",
        "",
        f"{'task':<28} {'group':<10} {'method':<20} {'NFE':>4} {'seed':>4}  {'state':<7} {'est. min':>8}",
    ]
    total, unknown, shared, assumed = 0.0, False, 1.0, False
    cores = os.cpu_count() or 1
    for run in runs:
        rate = rates.get(rate_key(run.group, run.method))
        assumed |= rate is None and fallback is not None and run.state != "done"
        if rate is None and fallback is not None and run.config.device == "cpu":
            factor = cpu_share_factor(fallback, run.config.torch_threads, workers, cores)
            shared = max(shared, factor)
            rate = replace(fallback, seconds_per_step=fallback.seconds_per_step * factor)
        rate = rate or fallback
        est = None if rate is None else estimate_seconds(run, rate)
        unknown |= est is None and run.state != "done"
        total += est or 0.0
        est_text = "-" if run.state == "done" else ("?" if est is None else f"{est / 60:.1f}")
        group = GROUP_LABELS.get(run.group, run.group)  # "robomimic" as is
        lines.append(
            f"{run.task:<28} {group:<10} {run.method:<20} {nfe(run.config):>4} "
            f"{run.seed:>4}  {run.state:<7} {est_text:>8}"
        )
    basis = (
        ("measured rates of finished runs" + (" and the preset's assumptions" if fallback else ""))
        if rates
        else ("the preset's assumptions (" + _estimate_text(fallback) + ")" if fallback else "")
    )
    if shared > 1.0:
        basis += (
            f"; training steps x{shared:.1f} for {workers} worker(s) x {cfg.torch_threads} thread(s) on {cores} cores"
        )
    lines.append("")
    if unknown:
        lines.append("estimated time: unknown (the preset has no estimate and no run has finished in --out yet)")
    else:
        lines.append(
            f"estimated time: {total / 60:.0f} min ({total / 3600:.1f} h) of runs; with {workers} "
            f"worker(s) about {total / workers / 3600:.1f} h wall; from {basis}"
        )
        if assumed and changed:
            verb = "changes" if len(changed) == 1 else "change"
            lines.append(
                f"  caution: {', '.join(changed)} {verb} the model or data the preset's step and episode "
                "times were measured on; runs may take much longer (or shorter) than this until a finished "
                "run in --out gives measured rates"
            )
    return "\n".join(lines)


def _estimate_text(e: Estimate) -> str:
    threads = f" at {e.threads} thread(s)" if e.threads else ""
    return f"{e.seconds_per_step} s/step{threads}, {e.seconds_per_episode} s/episode, {e.seconds_per_run} s/run"


def _eval_seed_range(n: int) -> str:
    from core.seeds import eval_seeds

    seeds = eval_seeds(n)
    return f"{seeds[0]}..{seeds[-1]}"


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mfp bench success",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="cpu", help=f"one of: {', '.join(known_presets())}")
    p.add_argument(
        "--tasks",
        help="comma list of tasks (push-v3, robomimic/lift, ...), groups (easy, medium, hard, "
        "very_hard, robomimic) or all (the 50 Meta-World tasks)",
    )
    p.add_argument("--methods", help=f"comma list of policy configs: {', '.join(known_methods())}")
    p.add_argument("--seeds", help="comma list of training seeds")
    p.add_argument("--episodes", type=int, help="evaluation episodes per run")
    p.add_argument("--steps", type=int, help="training steps per run (default: the preset's)")
    p.add_argument("--out", type=Path, help="output directory (default: bench/success/<preset>)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (each is one `mfp train` process)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time; run nothing")
    p.add_argument(
        "--best-of-periodic",
        action="store_true",
        help="also report the papers' secondary metric (best 5 periodic evals) where runs have them",
    )
    p.add_argument("overrides", nargs="*", help="extra hydra overrides for every run (key=value)")
    args = p.parse_intermixed_args(list(argv))  # overrides may come before or after the flags
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.episodes is not None and args.episodes < 1 or args.steps is not None and args.steps < 1:
        p.error("--episodes and --steps must be >= 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        preset = load_preset(args.preset)
        tasks = resolve_tasks(parse_list(args.tasks) if args.tasks else preset.tasks)
        methods = check_methods(parse_list(args.methods) if args.methods else preset.methods)
        seeds = [int(s) for s in parse_list(args.seeds)] if args.seeds else preset.seeds
        extra = check_overrides(args.overrides)
        check_overrides(preset.overrides)
        out = args.out or Path("bench") / "success" / args.preset
        runs = plan_runs(
            tasks,
            methods,
            seeds,
            args.episodes or preset.episodes,
            args.steps or preset.num_steps,
            preset.overrides,
            extra,
            out,
        )
    except (BenchError, ValueError) as e:  # UnknownTaskError is a ValueError
        print(f"mfp bench success: {e}", file=sys.stderr)
        return 2
    best = args.best_of_periodic
    done = [collect_result(r, best) for r in runs if r.state == "done"]
    print(f"mfp bench success --preset {args.preset}: {preset.description}\nout: {out}")
    print(describe_plan(runs, measured_rates(done), preset.estimate, args.workers, cost_overrides(extra)))
    if args.dry_run:
        return 0

    title = f"mfp bench success --preset {args.preset}"
    meta = {
        "preset": args.preset,
        "description": preset.description,
        "argv": list(argv),
        "protocol": "final EMA checkpoint; fixed evaluation seeds (core.seeds.eval_seeds); one backbone/encoder "
        "config for every method",
        "host": _host(),
    }
    results: dict[tuple[str, str, int], dict[str, Any]] = {(r["task"], r["method"], r["seed"]): r for r in done}

    def ordered() -> list[dict[str, Any]]:  # plan order
        return [results[k] for k in ((r.task, r.method, r.seed) for r in runs) if k in results]

    pending = [r for r in runs if r.state != "done"]
    ensure_task_demos(pending)
    slots: queue.Queue[str | None] = queue.Queue()
    on_gpu = any(r.config.device == "cuda" for r in pending)  # an explicit cuda:N is left where it was asked for
    for gpu in gpu_slots(args.workers, visible_gpus() if on_gpu else []):
        slots.put(gpu)

    def execute_in_slot(run: Run, label: str) -> dict[str, Any]:
        gpu = slots.get()
        try:
            return execute(run, label, gpu if run.config.device == "cuda" else None)
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(execute_in_slot, run, f"({i}/{len(pending)}) "): run for i, run in enumerate(pending, 1)}
        for future in as_completed(futures):
            run = futures[future]
            try:
                result = future.result()
            except Exception as e:  # the child's failures come back as results; this is the parent's own
                result = {
                    **_identity(run),
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                    "run_dir": str(run.out_dir),
                }
            if result["status"] == "ok" and best:
                result.update(best_of_periodic_evals(run.out_dir))
            results[(run.task, run.method, run.seed)] = result
            print(_finished_line(result), flush=True)
            write_outputs(ordered(), out, title, meta)
    markdown = write_outputs(ordered(), out, title, meta)
    if best and not any(r.get("best5_periodic") is not None for r in ordered()):
        print("[bench] --best-of-periodic: no run has periodic evaluations (eval.every_steps=0); not reported")
    print("\n" + markdown)
    print(f"[bench] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'success.png'}")
    return 0 if all(r["status"] == "ok" for r in ordered()) else 1


def _finished_line(r: dict[str, Any]) -> str:
    head = f"[bench] {r['task']} {r['method']} seed {r['seed']}:"
    if r["status"] != "ok":
        return f"{head} FAILED (exit {r.get('returncode')}); last log lines:\n{r['error']}"
    latency = r["latency_ms_p50"] if r["latency_ms_p50"] is not None else float("nan")
    return (
        f"{head} {r['success']:.1f} % ({r['ci95'][0]:.0f}-{r['ci95'][1]:.0f}) over {r['n_episodes']} episodes, "
        f"{r['steps']} steps in {r['train_seconds'] / 60:.1f} min, latency p50 {latency:.2f} ms"
    )


def _host() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
