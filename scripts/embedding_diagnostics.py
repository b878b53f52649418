"""Moved to the research harness: from the repository root run `python -m benchmarks.embedding_diagnostics ...`."""

import sys

sys.exit(__doc__)
