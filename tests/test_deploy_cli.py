"""`mfp deploy|export|sim-arm` argument handling: typed key=value overrides, clear refusals."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from deploy.safety import resolve_limits
from mfp.cli import main as cli_main
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
    assert cli_main(["deploy", f"checkpoint={tmp_path}", "blend=average"]) == 2
    assert cli_main(["deploy", f"checkpoint={tmp_path}", "limits=no_such_robot"]) == 2
    assert "franka_joint, sim_sawyer" in capsys.readouterr().err
    assert cli_main(["deploy", f"checkpoint={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert resolve_limits("sim_sawyer").name == "sim_sawyer.yaml"


@pytest.mark.parametrize(
    "command, arg, needle",
    [
        ("deploy", "hz=0", "hz must be in (0"),
        ("deploy", "hz=nan", "hz must be a finite number"),
        ("deploy", "hz=inf", "hz must be a finite number"),
        ("deploy", "deadline_s=-1", "deadline_s must be in (0"),
        ("deploy", "deadline_s=0", "deadline_s must be in (0"),
        ("deploy", "ensemble_decay=nan", "ensemble_decay must be a finite number"),
        ("deploy", "ensemble_decay=-0.1", "ensemble_decay must be in [0"),
        ("deploy", "latency_offset_s=-0.01", "latency_offset_s must be in [0"),
        ("deploy", "timeout_s=0", "timeout_s must be in (0"),
        ("deploy", "threads=0", "threads must be in [1"),
        ("deploy", "duration_s=nan", "duration_s must be a finite number"),
        ("deploy", "robot=tcp://127.0.0.1:99999", "invalid port"),
        ("deploy", "robot=tcp://10.0.0.2:5555", "not loopback"),
        ("deploy", "noise=cold", "unknown noise 'cold'"),
        ("deploy", "spin_s=0.5", "spin_s must be in [0"),
        ("deploy", "realtime_priority=100", "realtime_priority must be in [0, 99]"),
        ("sim-arm", "hz=nan", "hz must be a finite number"),
        ("sim-arm", "hz=0", "hz must be in (0"),
        ("sim-arm", "port=70000", "port must be in [0, 65535]"),
        ("sim-arm", "host=0.0.0.0", "not loopback"),
        ("sim-arm", "num_points=0", "num_points must be >= 1"),
        ("sim-arm", "duration_s=-1", "duration_s must be in [0"),
        ("export", "tolerance=0", "tolerance must be in (0"),
        ("export", "tolerance=nan", "tolerance must be a finite number"),
        ("export", "n_check=0", "n_check must be in [1"),
        ("export", "hz=-5", "hz must be in (0"),
        ("export", "formats=[tflite]", "formats must be a non-empty list"),
        ("export", "formats=[]", "formats must be a non-empty list"),
        ("export", "opset=3", "opset must be in [17"),
    ],
)
def test_every_setting_is_validated_up_front_with_one_line(command, arg, needle, capsys):
    required = {"deploy": ["checkpoint=x"], "export": ["checkpoint=x", "out=y"], "sim-arm": []}[command]
    assert cli_main([command, *required, arg]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_deploy_never_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    """stats= and chunks= are checked before anything connects or moves (the robot address here has no robot)."""
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    ckpt = tmp_path / "policy"
    ckpt.mkdir()
    robot = "robot=tcp://127.0.0.1:9"
    assert cli_main(["deploy", f"checkpoint={ckpt}", robot, f"stats={notes}"]) == 2
    assert "stats=" in capsys.readouterr().err and notes.read_text() == '{"mine": true}'
    assert cli_main(["deploy", f"checkpoint={ckpt}", robot, f"chunks={notes}"]) == 2
    assert cli_main(["deploy", f"checkpoint={ckpt}", robot, f"stats={ckpt / 'stats.json'}", "overwrite=true"]) == 2
    assert "inside the input" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("parts=[export,nope]", "unknown part 'nope'"),
        ("loads=[idle]", "unknown load 'idle'"),
        ("formats=[tflite]", "unknown format 'tflite'"),
        ("hz=nan", "hz must be a finite number"),
        ("realtime_priority=2", "realtime_priority must be 0 or >= 3"),
        ("duration_s=0", "duration_s must be in (0"),
    ],
)
def test_bench_deploy_settings_are_validated(arg, needle, capsys):
    assert cli_main(["bench", "deploy", arg]) == 2
    assert needle in capsys.readouterr().err


def test_bench_deploy_refuses_to_overwrite_a_foreign_file(tmp_path, capsys):
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": true}')
    assert cli_main(["bench", "deploy", "parts=[bridge]", f"out={mine}"]) == 2
    assert "did not make" in capsys.readouterr().err and mine.read_text() == '{"mine": true}'
