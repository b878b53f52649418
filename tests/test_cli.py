"""The `mfp` dispatcher: help, close-match suggestions, and clean one-line errors for the package's own errors."""

import pytest

from core.seeds import EVAL_SEED_BASE, eval_seeds
from mfp.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("collect", "train", "eval", "export", "deploy", "sim-arm", "bench"):
        assert command in out


def test_eval_help_says_which_seeds_seed0_selects(capsys):
    """seed0 is an offset into the evaluation seeds, not a seed: the help names the base it is added to."""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    seed0_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("seed0="))
    assert f"{EVAL_SEED_BASE} + seed0 + i" in seed0_line
    assert eval_seeds(2, 5)[0] == EVAL_SEED_BASE + 5  # what the line says


def test_eval_with_a_negative_seed0_is_one_clear_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "task=push-v3", "seed0=-5", "n_episodes=1", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "seed0 must be >= 0, got -5" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_command_suggests_close_matches(capsys):
    assert main(["colect"]) == 2
    assert "did you mean collect" in capsys.readouterr().err


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", f"checkpoint={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


_REFAULTS = """
import resource, sys
import torch
torch.set_num_threads(1)
if sys.argv[1] == "mfp":
    import mfp.cli  # noqa: F401
def step():  # one PointNet layer's activations at batch 128 (128 x 512 x 256 floats, 64 MiB), written then freed
    torch.empty(128, 512, 256).fill_(1.0)
for _ in range(3):  # warm-up: the heap reaches its steady size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_mfp_reuses_freed_activations_instead_of_faulting_them_back():
    import platform
    import subprocess
    import sys

    import pytest

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator tuning is glibc's mallopt")

    def page_faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True)
        return int(run.stdout)

    plain, tuned = page_faults("plain"), page_faults("mfp")
    # glibc's default maps a block this large afresh each time (above its 32 MiB dynamic mmap ceiling): every page
    # faults again, 16,384 a step; with mfp's tuning the freed block stays in the heap and is reused
    assert plain > 12 * 16_000
    assert tuned < plain / 3, (plain, tuned)  # measured here: 196,620 against 0-32,769 (0-2 of the 12 steps)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["train", "policy.meanflow.cfg_omega=2"], "'policy.meanflow.cfg_omega' was removed: guidance"),
        (["train", "+policy.aux_regression_weight=1"], "'policy.aux_regression_weight' was removed"),
        (["eval", "checkpoint=x", "noise_scale=0.5"], "'noise_scale' was removed"),
        (["eval", "checkpoint=x", "average_draws=8"], "'average_draws' was removed"),
    ],
)
def test_a_removed_setting_says_why_it_went(argv, says, capsys, tmp_path, monkeypatch):
    """Settings the results rejected left the product; typing one names the evidence, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # parse_overrides exits for the non-hydra commands
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and "docs/results/" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_research_harness_is_found_from_a_checkout_and_named_elsewhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "success", "--dry-run"]) == 2
    assert "python -m benchmarks.success" in capsys.readouterr().err


def test_moved_entry_points_say_what_replaced_them():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for argv, says in (
        (["-m", "training.train"], "torchrun --nproc_per_node=N -m mfp train"),
        ([str(root / "scripts" / "combine_results.py")], "python -m benchmarks.combine_results"),
    ):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=root)
        assert done.returncode != 0 and says in done.stderr


@pytest.mark.slow
def test_the_wheel_carries_the_product_and_no_research_harness(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    had_build_dir = (root / "build").exists()
    build = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    try:
        subprocess.run(build, cwd=root, check=True, capture_output=True)
    finally:
        if not had_build_dir:
            shutil.rmtree(root / "build", ignore_errors=True)  # setuptools' scratch space in the checkout
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"core", "demos", "encoders", "policies", "envs", "training", "deploy", "mfp", "configs"}
    assert "configs/train.yaml" in names and "mfp/bench/heads.py" in names
    assert not [n for n in names if "success" in n or n.startswith("benchmarks")]
