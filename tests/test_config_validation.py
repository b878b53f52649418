"""Property tests of the config dataclasses: every value is accepted exactly when it is in its documented range,
and anything else is a ConfigError naming the setting (never a crash later, never a silent acceptance)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from mfp.commands.collect import CollectConfig
from mfp.commands.eval import EvalCliConfig
from policies.config import BackboneConfig, DispersiveConfig, MeanFlowConfig
from training.config import EvalConfig, TaskConfig, TrainConfig
from training.evaluation import InferenceOptions


@dataclass(frozen=True)
class Range:
    """What a field accepts: an int or a finite float (inf only with ``inf``) within its bounds."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    inf: bool = False

    def accepts(self, value: float) -> bool:
        if self.integer and (isinstance(value, float) or isinstance(value, bool)):
            return False
        if math.isnan(value) or (math.isinf(value) and not self.inf):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


INT, POS = Range(True, 0), Range(True, 1)
CASES = [
    (TrainConfig, "batch_size", POS),
    (TrainConfig, "num_steps", POS),
    (TrainConfig, "log_every", POS),
    (TrainConfig, "checkpoint_every", POS),
    (TrainConfig, "warmup_steps", INT),
    (TrainConfig, "torch_threads", INT),
    (TrainConfig, "seed", INT),
    (TrainConfig, "lr", Range(False, 0.0, low_open=True)),
    (TrainConfig, "weight_decay", Range(False, 0.0)),
    (TrainConfig, "grad_clip", Range(False, 0.0, low_open=True, inf=True)),
    (TrainConfig, "ema_power", Range(False, 0.0, low_open=True)),
    (TrainConfig, "ema_max_decay", Range(False, 0.0, 1.0, high_open=True)),
    (TrainConfig, "val_ratio", Range(False, 0.0, 1.0, high_open=True)),
    (TaskConfig, "n_demos", POS),
    (TaskConfig, "num_points", POS),
    (TaskConfig, "max_episode_steps", POS),
    (TaskConfig, "control_hz", Range(False, 0.0, low_open=True)),
    (EvalConfig, "episodes", INT),
    (EvalConfig, "workers", INT),
    (MeanFlowConfig, "ratio_r_eq_t", Range(False, 0.0, 1.0)),
    (MeanFlowConfig, "p_std", Range(False, 0.0, low_open=True)),
    (MeanFlowConfig, "adaptive_p", Range(False, 0.0)),
    (MeanFlowConfig, "num_inference_steps", POS),
    (BackboneConfig, "time_scale", Range(False, 0.0, low_open=True)),
    (BackboneConfig, "hidden_dim", POS),
    (DispersiveConfig, "weight", Range(False, 0.0)),
    (DispersiveConfig, "temperature", Range(False, 0.0, low_open=True)),
    (EvalCliConfig, "n_episodes", POS),
    (EvalCliConfig, "seed0", INT),
    (EvalCliConfig, "num_steps", INT),
    (EvalCliConfig, "action_noise", Range(False, 0.0)),
    (CollectConfig, "n_episodes", POS),
    (CollectConfig, "action_noise", Range(False, 0.0)),
    (CollectConfig, "execution_noise", Range(False, 0.0)),
    (InferenceOptions, "n_action_steps", INT),
]
VALUES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.0, 1.0, -0.0, 0.5, 1e-300, float("nan"), float("inf"), -float("inf")]),
)


@pytest.mark.parametrize("schema, name, allowed", CASES, ids=[f"{c.__name__}.{n}" for c, n, _ in CASES])
@settings(max_examples=60, deadline=None)
@given(value=VALUES)
def test_a_value_is_accepted_exactly_when_it_is_in_range(schema: type, name: str, allowed: Range, value: float) -> None:
    if allowed.integer and isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        value = int(value)  # what omegaconf makes of "3.0" for an int field; the range is what is tested here
    if allowed.accepts(value):
        assert getattr(schema(**{name: value}), name) == value
    else:
        with pytest.raises(ConfigError, match=name.split(".")[-1]):
            schema(**{name: value})


def test_choices_and_devices_are_checked_where_they_are_declared() -> None:
    with pytest.raises(ConfigError, match="known: offline, online, disabled"):
        TrainConfig().wandb.__class__(mode="sometimes")
    with pytest.raises(ConfigError, match="device='gpu0'"):
        TrainConfig(device="gpu0")
    with pytest.raises(ConfigError, match="eval.device"):
        EvalConfig(device="tpu")
    with pytest.raises(ConfigError, match="device=cuda:7 but this torch"):  # a run here: the machine must have it
        EvalCliConfig(device="cuda:7")
    with pytest.raises(ConfigError, match="betas"):
        TrainConfig(betas=[0.9])
    with pytest.raises(ConfigError, match="policy.meanflow.t_dist"):
        MeanFlowConfig(t_dist="beta")
