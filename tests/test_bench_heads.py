"""`mfp bench heads` runs end to end at a tiny size and writes every figure it prints."""

from __future__ import annotations

import json

from mfp.bench import heads as bench


def test_bench_heads_tiny_run_writes_all_figures(tmp_path, capsys) -> None:
    out = tmp_path / "heads.json"
    argv = [
        "--backbone",
        "mlp",
        "--hidden-dim",
        "16",
        "--n-layers",
        "1",
        "--calls",
        "3",
        "--warmup",
        "1",
        "--train-steps",
        "2",
        "--train-batch",
        "8",
        "--toy-steps",
        "3",
        "--toy-hidden",
        "16",
        "--toy-layers",
        "1",
        "--toy-samples",
        "8",
        "--out",
        str(out),
    ]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["latency"]) == set(bench.METHODS)
    assert all(0 < row["p50_ms"] <= row["p99_ms"] for row in result["latency"].values())
    assert result["latency"]["ddpm-100"]["nfe"] == 100
    assert set(result["train_step"]) == set(bench.TRAIN_HEADS)
    assert set(result["toy"]) == {*bench.METHODS, "data (reference)"}
    assert set(result["targets"]) == set(bench.TARGETS)
    for name, row in result["targets"].items():
        assert row["met"] == bench.target_met(name, row["value"])
    printed = capsys.readouterr().out
    assert "meanflow-1" in printed and "ddpm-100" in printed and "ratios (target)" in printed
