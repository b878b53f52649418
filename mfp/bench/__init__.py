"""`mfp bench <name>`: benchmarks that print a table and write JSON. Each submodule has `main(argv) -> int`.

``heads``, ``policy``, ``envs`` and ``deploy`` ship with the package. The research harness (``success``,
``encoders``, ``robomimic``, ``finetune``) lives in the checkout's ``benchmarks/`` folder, which is not installed:
from a checkout ``mfp bench success ...`` runs ``python -m benchmarks.success ...`` there; elsewhere it says where
to find it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

BENCHMARKS = {
    "heads": "mfp.bench.heads",
    "envs": "mfp.bench.envs",
    "deploy": "mfp.bench.deploy",
    "policy": "mfp.bench.policy",
}
RESEARCH = {
    "success": "benchmarks.success",
    "encoders": "benchmarks.encoders",
    "robomimic": "benchmarks.robomimic",
    "finetune": "benchmarks.finetune",
}


def main(argv: list[str]) -> int:
    names = [*BENCHMARKS, *RESEARCH]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mfp bench {" + ",".join(names) + "} [args...]")
        return 0
    name = argv[0]
    if name in RESEARCH:
        return _run_from_checkout(RESEARCH[name], argv[1:])
    if name not in BENCHMARKS:
        print(f"mfp bench: unknown benchmark '{name}'; known: {', '.join(names)}", file=sys.stderr)
        return 2
    sys.argv = [f"mfp bench {name}", *argv[1:]]
    return int(importlib.import_module(BENCHMARKS[name]).main(argv[1:]) or 0)


def _run_from_checkout(module: str, argv: list[str]) -> int:
    """Run a research benchmark from the checkout in the working directory, or say where it lives."""
    if not (Path.cwd() / module.replace(".", "/")).with_suffix(".py").is_file():
        print(
            f"mfp bench: '{module.split('.')[-1]}' is part of the research harness in a checkout's benchmarks/ "
            f"folder (not installed): from the repository root run `python -m {module} ...`",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", module, *argv], cwd=Path.cwd())
