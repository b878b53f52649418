"""Moved to the research harness: from the repository root run `python -m benchmarks.combine_results ...`."""

import sys

sys.exit(__doc__)
