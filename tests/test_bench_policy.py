"""`mfp bench policy`: whole policies built as `mfp train` builds them, timed on synthetic demos of the real spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mfp.bench import policy as bench
from training.config import compose_train_config
from training.tasks import task_shape_meta


def test_bench_policy_tiny_run_writes_train_and_latency(tmp_path, capsys) -> None:
    out = tmp_path / "policy.json"
    argv = [
        "--cases",
        "metaworld-cpu",
        "--methods",
        "meanflow,ddim",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--calls",
        "3",
        "--batch",
        "4",
        "--episodes",
        "2",
        "--episode-len",
        "12",
        "--out",
        str(out),
        "policy.backbone.hidden_dim=32",
        "policy.encoder.point_hidden_dims=[16,32]",
        "task.num_points=64",
    ]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["cases"]["metaworld-cpu"]
    assert set(rows) == {"meanflow", "ddim"}
    assert rows["meanflow"]["latency"]["nfe"] == 1 and rows["ddim"]["latency"]["nfe"] == 10
    for row in rows.values():
        assert row["train"]["steps_per_s"] > 0 and row["train"]["batch"] == 4
        assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p99_ms"]
    printed = capsys.readouterr().out
    assert "metaworld-cpu latency ddim / meanflow" in printed


@pytest.mark.parametrize("case", list(bench.CASES))
def test_every_case_composes_and_its_synthetic_demos_match_the_task_spec(case: str) -> None:
    cfg = compose_train_config([*bench.CASES[case], "output_dir=unused"])
    meta = bench.shape_meta_of(cfg)
    assert meta == task_shape_meta(cfg.task)  # the Meta-World fallback constants agree with the environment
    buffer = bench.synthetic_buffer(meta, episodes=2, length=5, seed=0)
    assert buffer.n_episodes == 2 and buffer.shape_meta(list(meta.obs)) == meta
    for key, spec in meta.obs.items():
        assert buffer[key].dtype == (np.uint8 if spec.type == "rgb" else np.float32)
    assert np.abs(buffer["action"]).max() <= 1.0


def test_metaworld_fallback_spec_equals_the_environment_spec(monkeypatch) -> None:
    cfg = compose_train_config(["task=metaworld", "output_dir=unused"])

    def no_metaworld(task):
        raise ImportError("metaworld not installed")

    monkeypatch.setattr("training.tasks.task_shape_meta", no_metaworld)
    assert bench.shape_meta_of(cfg) == task_shape_meta(cfg.task)


def test_unknown_case_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "metaworld-tpu"])
    assert "unknown case" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda"])
    assert "sees no CUDA device" in capsys.readouterr().err
