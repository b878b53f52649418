"""The research harness: run from a checkout (``python -m benchmarks.<name> ...``), never installed.

``success`` (the honest success-rate protocol over tasks x methods x seeds, with ``presets/``), ``success_report``,
``combine_results``, ``encoders``, ``robomimic``, ``embedding_diagnostics``; ``device/`` holds the scripts that ran
studies on lent GPU machines. The figures they produced live in ``docs/results/``.
"""
