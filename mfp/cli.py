"""`mfp`: the one console script. Dispatches `mfp <command> [args...]` to the module that owns the command.

Commands that take hydra overrides (`key=value`) are hydra apps; the dispatcher only rewrites argv so hydra
sees the sub-command's own name.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys

from core.errors import MfpError
from mfp.cli_args import full_errors, one_line

# OpenMP threads that spin while waiting collapse when another process shares the cores: measured here, a 2-thread
# MeanFlow training step took 5.0 s with a competing process under the default policy and 0.33 s with PASSIVE.
# It must be set before torch loads OpenMP, so it lives in the entry point.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _reuse_freed_memory() -> None:
    """Keep large freed blocks in the heap instead of returning them to the kernel (glibc only).

    By default glibc serves every block over 32 MB with a fresh mmap and unmaps it on free, so each training step
    page-faults its ~100 MB of PointNet activations back in from zeroed pages. Measured here (MeanFlow, 1 thread,
    80 steps): 13.2 s of 61 s in the kernel, 1.54 steps/s; with the thresholds raised 1.1 s and 2.03 steps/s.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (macOS, musl): nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


_reuse_freed_memory()

# command -> (module, function, one-line help). Each function takes the remaining argv.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "collect": ("mfp.commands.collect", "main", "generate scripted-expert demonstrations into a zarr dataset"),
    "merge": ("mfp.commands.merge", "main", "concatenate robomimic HDF5 files of one task into one"),
    "convert": (
        "mfp.commands.convert",
        "main",
        "demos between robosuite/robomimic HDF5, LeRobot datasets and zarr (src=... out=... to=...)",
    ),
    "train": (
        "mfp.commands.train",
        "main",
        "collect demos if missing, train, evaluate (hydra overrides: task.env=... policy=...)",
    ),
    "finetune": (
        "mfp.commands.finetune",
        "main",
        "fine-tune a one-step policy online (PPO or noise steering)",
    ),
    "eval": ("mfp.commands.eval", "main", "evaluate a checkpoint or the scripted expert on fixed seeds"),
    "export": ("mfp.commands.export", "main", "export a checkpoint to ONNX and torch.export with parity checks"),
    "deploy": ("mfp.commands.deploy", "main", "run the real-time control loop against a robot bridge"),
    "sim-arm": ("mfp.commands.sim_arm", "main", "serve a simulated Meta-World arm over the robot bridge"),
    "bench": ("mfp.bench", "main", "benchmarks: heads, policy, envs, deploy (success: from a checkout)"),
}


def _usage() -> str:
    lines = ["usage: mfp <command> [args...] [--debug]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # full tracebacks for the project's own errors too (hydra's switch for the same)
        argv = [a for a in argv if a != "--debug"]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        print(f"mfp: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    sys.argv = [f"mfp {name}", *rest]
    try:
        result = getattr(module, func_name)(rest)
    except MfpError as e:
        # Errors this package raises on purpose (bad value, damaged file, mismatch) carry their own message and advice:
        # one line, no traceback. Anything else is a bug and keeps its traceback.
        if full_errors():
            raise
        print(one_line(f"mfp {name}", e), file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
