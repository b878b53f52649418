"""``python -m mfp <command> ...`` (e.g. under ``torchrun -m mfp train ...``): the same dispatcher as ``mfp``."""

from mfp.cli import main

raise SystemExit(main())
