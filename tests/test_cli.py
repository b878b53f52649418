"""The `mfp` dispatcher: help, close-match suggestions, and clean one-line errors for the package's own errors."""
from mfp.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("collect", "train", "eval", "export", "deploy", "sim-arm", "bench"):
        assert command in out


def test_unknown_command_suggests_close_matches(capsys):
    assert main(["colect"]) == 2
    assert "did you mean collect" in capsys.readouterr().err


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", f"checkpoint={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "CheckpointError" in err and "does not exist" in err and "Traceback" not in err
