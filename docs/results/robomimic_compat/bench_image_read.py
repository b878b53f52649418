"""Time to read one training item from a robomimic image HDF5 file, per storage layout of the image datasets.

    python docs/results/robomimic_compat/bench_image_read.py SRC.hdf5 [--reads 2000]

Copies every demo of SRC (e.g. robomimic's own ``dataset_states_to_obs.py --compress`` output) into one file per
layout, identical values, and reads items the way robomimic's ``SequenceDataset`` does in its ``low_dim`` cache
mode: for a random (demo, step), a slice of every ``obs/<key>`` dataset straight from disk (``seq_length`` frames).
Prints the median time per item (every obs key, and the image keys alone) and the file sizes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import h5py
import numpy as np

LAYOUTS = {
    "gzip, automatic chunks (robomimic --compress; ours before)": dict(compression="gzip", chunks=True),
    "gzip 4, one chunk per frame (ours, compress=True)": dict(compression="gzip", compression_opts=4, per_frame=True),
    "uncompressed, one chunk per frame": dict(per_frame=True),
    "uncompressed, contiguous (ours now; robomimic default)": dict(),
}


def copy(src: str, dst: str, layout: dict) -> None:
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for name in f["data"]:
            for key, ds in f[f"data/{name}/obs"].items():
                arr = ds[()]
                opts = {k: v for k, v in layout.items() if k != "per_frame"}
                if arr.ndim == 4 and layout.get("per_frame"):
                    opts["chunks"] = (1, *arr.shape[1:])
                if arr.ndim != 4:
                    opts = {}
                g.create_dataset(f"data/{name}/obs/{key}", data=arr, **opts)


def bench(path: str, reads: int, seq_length: int, rng: np.random.Generator, images_only: bool) -> float:
    """Median milliseconds per item: every obs key (or the image keys only) of one random window."""
    times = []
    with h5py.File(path, "r") as f:
        names = list(f["data"])
        keys = [k for k in f[f"data/{names[0]}/obs"] if not images_only or k.endswith("_image")]
        lengths = {n: f[f"data/{n}/actions"].shape[0] if "actions" in f[f"data/{n}"] else None for n in names}
        for _ in range(reads):
            name = names[rng.integers(len(names))]
            n = lengths[name] or f[f"data/{name}/obs/{keys[0]}"].shape[0]
            start = int(rng.integers(0, n - seq_length + 1))
            t = time.perf_counter()
            for key in keys:
                f[f"data/{name}/obs/{key}"][start : start + seq_length]  # robomimic's get_dataset_for_ep, uncached
            times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--seq_length", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, layout) in enumerate(LAYOUTS.items()):
            dst = os.path.join(tmp, f"{i}.hdf5")
            copy(args.src, dst, layout)
            bench(dst, 50, args.seq_length, np.random.default_rng(1), False)  # warm the page cache
            every = bench(dst, args.reads, args.seq_length, np.random.default_rng(0), False)
            images = bench(dst, args.reads, args.seq_length, np.random.default_rng(0), True)
            size = os.path.getsize(dst) / 1e6
            print(f"{label:<58} all keys {every:6.3f} ms  image keys {images:6.3f} ms  {size:6.2f} MB")


if __name__ == "__main__":
    main()
