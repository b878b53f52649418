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


_REFAULTS = """
import resource, sys
import torch
if sys.argv[1] == "mfp":
    import mfp.cli  # noqa: F401
a = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB, like one PointNet activation: above glibc's mmap threshold
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = torch.ones(64 << 20, dtype=torch.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_mfp_reuses_freed_large_blocks_instead_of_faulting_them_back():
    import platform
    import subprocess
    import sys

    import pytest

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator tuning is glibc's mallopt")

    def faults(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True).stdout)

    pages = (64 << 20) // 4096
    assert faults("plain") > pages // 2  # the default: a fresh mapping, every page faulted in again
    assert faults("mfp") < pages // 10
