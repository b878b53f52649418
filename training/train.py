"""Moved: the `mfp train` command lives in ``mfp/commands/train.py``; this module only says so."""

import sys

if __name__ == "__main__":
    sys.exit(
        "training.train has moved: run `mfp train ...`; under torchrun use "
        "`torchrun --nproc_per_node=N -m mfp train ...`"
    )
