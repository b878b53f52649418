"""Assemble one `mfp bench success` table from runs recorded in several results.json files.

For runs made by separate invocations (another seed, another session, another machine) whose run folders are not
together under one --out. Each source is PATH or PATH:method1,method2 (keep only those methods); a (task, method,
seed) found twice is an error. Writes results.json, results.md and success.png under OUT.

    python scripts/combine_results.py OUT [--skip-tasks t1,t2] [--title T] SOURCE [SOURCE ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfp.bench.success import write_outputs  # noqa: E402


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
        path, _, methods = source.partition(":")
        keep = {m for m in methods.split(",") if m}
        try:
            recorded = json.loads(Path(path).read_text())["runs"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"{path}: not a readable `mfp bench success` results.json ({type(e).__name__}: {e})")
        for run in recorded:
            if run["task"] in skip or (keep and run["method"] not in keep):
                continue
            key = (run["task"], run["method"], run["seed"])
            if key in seen:
                raise SystemExit(f"{key} is in both {seen[key]} and {path}")
            seen[key] = path
            runs.append(run)
    print(write_outputs(runs, args.out, args.title, {"combined_from": args.sources, "skipped_tasks": sorted(skip)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
