"""`mfp deploy|export|sim-arm` argument handling: typed key=value overrides, clear refusals."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from deploy.safety import resolve_limits
from mfp.cli_args import parse_overrides
from mfp.commands.deploy import DeployConfig
from mfp.commands.deploy import main as deploy_main
from mfp.commands.sim_arm import SimArmConfig


def test_overrides_are_typed_and_unknown_keys_fail(capsys):
    cfg = parse_overrides(DeployConfig, ["checkpoint=x", "hz=20", "blend=ensemble", "record=null"], "mfp deploy")
    assert cfg.hz == 20.0 and cfg.blend == "ensemble" and cfg.record is None
    with pytest.raises(ConfigError, match="hzz"):
        parse_overrides(DeployConfig, ["hzz=20"], "mfp deploy")
    with pytest.raises(ConfigError, match="port"):
        parse_overrides(SimArmConfig, ["port=abc"], "mfp sim-arm")
    with pytest.raises(SystemExit) as e:
        parse_overrides(SimArmConfig, ["--help"], "mfp sim-arm")
    assert e.value.code == 0 and "num_points=512" in capsys.readouterr().out


def test_deploy_refuses_bad_setups_before_touching_a_robot(tmp_path, capsys):
    with pytest.raises(ConfigError, match="missing mandatory value: checkpoint"):
        deploy_main([])
    assert deploy_main([f"checkpoint={tmp_path}", "blend=average"]) == 2
    assert deploy_main([f"checkpoint={tmp_path}", "limits=no_such_robot"]) == 2
    assert "franka_joint, sim_sawyer" in capsys.readouterr().err
    assert deploy_main([f"checkpoint={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert resolve_limits("sim_sawyer").name == "sim_sawyer.yaml"
