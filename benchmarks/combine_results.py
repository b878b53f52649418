"""Assemble one `mfp bench success` table from runs recorded in several results.json files.

For runs made by separate invocations (another seed, another session, another machine) whose run folders are not
together under one --out. Each source is PATH, or PATH:SPEC with SPEC a comma list of methods to keep, each either
``method`` or ``method=label`` (kept under a new name, so that variants of one head, e.g. two learning rates, sit
side by side and enter the paired comparison). A (task, method, seed) found twice is an error. Writes results.json,
results.md and success.png under OUT.

    python -m benchmarks.combine_results OUT [--skip-tasks t1,t2] [--title T] SOURCE [SOURCE ...]
    python -m benchmarks.combine_results OUT bench/lr6e4/results.json old/results.json:meanflow=meanflow@3e-4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.success import write_outputs


def parse_source(source: str) -> tuple[str, dict[str, str]]:
    """PATH[:m1,m2=label,...] -> (PATH, {method: label}); an empty map keeps every method under its own name."""
    path, _, spec = source.partition(":")
    names: dict[str, str] = {}
    for item in filter(None, spec.split(",")):
        method, _, label = item.partition("=")
        if not method or (label == "" and "=" in item):
            raise SystemExit(f"{source}: '{item}' is not METHOD or METHOD=LABEL")
        names[method] = label or method
    return path, names


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("sources", nargs="+")
    p.add_argument("--skip-tasks", default="", help="comma list of tasks to leave out")
    p.add_argument("--title", default="mfp bench success (combined)")
    args = p.parse_args()
    skip = {t for t in args.skip_tasks.split(",") if t}
    runs, seen = [], {}
    for source in args.sources:
        path, names = parse_source(source)
        try:
            recorded = json.loads(Path(path).read_text())["runs"]
            keys = [(run["task"], run["method"], run["seed"]) for run in recorded]  # a run lacking one: KeyError
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(
                f"{path}: not a readable `mfp bench success` results.json ({type(e).__name__}: {e})"
            ) from None
        methods = {method for _, method, _ in keys}
        if missing := sorted(set(names) - methods):
            raise SystemExit(
                f"{source}: {path} has no runs of {', '.join(missing)}; it has {', '.join(sorted(methods))}"
            )
        for run in recorded:
            if run["task"] in skip or (names and run["method"] not in names):
                continue
            run = {**run, "method": names.get(run["method"], run["method"])}
            key = (run["task"], run["method"], run["seed"])
            if key in seen:
                raise SystemExit(f"{key} is in both {seen[key]} and {path}")
            seen[key] = path
            runs.append(run)
    print(write_outputs(runs, args.out, args.title, {"combined_from": args.sources, "skipped_tasks": sorted(skip)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
