"""Vocabulary every layer shares: the observation spec, atomic file writes, the demo/eval seed ranges."""
