"""`mfp bench <name>`: benchmarks that print a table and write JSON. Each submodule has `main(argv) -> int`."""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "heads": "mfp.bench.heads",
    "encoders": "mfp.bench.encoders",
    "envs": "mfp.bench.envs",
    "success": "mfp.bench.success",
    "deploy": "mfp.bench.deploy",
    "robomimic": "mfp.bench.robomimic",
    "policy": "mfp.bench.policy",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mfp bench {" + ",".join(BENCHMARKS) + "} [args...]")
        return 0
    name = argv[0]
    if name not in BENCHMARKS:
        print(f"mfp bench: unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    sys.argv = [f"mfp bench {name}", *argv[1:]]
    return int(importlib.import_module(BENCHMARKS[name]).main(argv[1:]) or 0)
