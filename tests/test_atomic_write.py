"""Atomic writes of result files, checkpoints and exports: a reader never finds them torn or missing."""

import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import random_stats
from test_policy import tiny_config

from core import atomic_write
from core.atomic_write import replace_dir, write_text
from policies.checkpoint import CheckpointError, load_policy, save_policy
from policies.factory import build_policy


def make_dir(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_write_text_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "eval_info.json"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(TypeError):
        write_text(path, b"not text")  # fails inside the write: the file keeps its contents, no temporary is left
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["eval_info.json"]


def test_a_training_state_that_fails_to_save_leaves_the_last_one(tmp_path):
    import torch

    from training.state import load_train_state, save_train_state

    path = tmp_path / "train_state.pt"
    save_train_state(path, {"step": 250, "w": torch.ones(3)})
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_train_state(path, {"step": 500, "bad": lambda: None})  # torch.save cannot pickle it, half-way through
    assert load_train_state(path)["step"] == 250
    assert [p.name for p in tmp_path.iterdir()] == ["train_state.pt"]


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "fallback"])
def test_replace_dir_leaves_the_new_contents_and_nothing_beside(tmp_path, monkeypatch, atomic):
    if not atomic:
        monkeypatch.setattr(atomic_write, "_RENAMEAT2", None)
    dest = tmp_path / "ckpt"
    replace_dir(make_dir(tmp_path / ".new1", "one"), dest)
    replace_dir(make_dir(tmp_path / ".new2", "two"), dest)
    assert (dest / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.skipif(atomic_write._RENAMEAT2 is None, reason="needs Linux renameat2")
def test_a_reader_in_another_process_never_finds_the_directory_missing(tmp_path):
    dest = tmp_path / "ckpt"
    replace_dir(make_dir(tmp_path / ".new", "0"), dest)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import os, sys
        missing = reads = 0
        while not os.path.exists({str(tmp_path / "stop")!r}):
            reads += 1
            missing += not os.path.isdir({str(dest)!r})
        print(missing, reads)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # the reader is polling
    for i in range(1, 400):
        replace_dir(make_dir(tmp_path / ".new", str(i)), dest)
    (tmp_path / "stop").touch()
    missing, reads = map(int, reader.communicate(timeout=60)[0].split())
    assert reads > 1000
    assert missing == 0, f"the directory was missing on {missing} of {reads} reads"
    assert (dest / "f.txt").read_text() == "399"


def test_a_checkpoint_caught_between_the_fallback_renames_is_named_by_the_error(small_shape_meta, tmp_path):
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    ckpt = save_policy(policy, cfg, tmp_path / "policy")
    ckpt.rename(tmp_path / ".policy.old-4242")  # killed after the first of the fallback's two renames
    with pytest.raises(CheckpointError, match=r"\.policy\.old-4242"):
        load_policy(ckpt)
    (tmp_path / ".policy.old-4242").rename(ckpt)  # what the error tells the user to do
    load_policy(ckpt)


def test_save_policy_clears_what_a_killed_writer_left(small_shape_meta, tmp_path):
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    make_dir(tmp_path / ".policy.tmp-99999", "half-written")
    save_policy(policy, cfg, tmp_path / "policy")
    save_policy(policy, cfg, tmp_path / "policy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    load_policy(tmp_path / "policy")


def test_check_output_refuses_what_the_command_did_not_make_and_its_own_inputs(tmp_path):
    from core.atomic_write import OutputError, check_output

    check_output(tmp_path / "new")  # does not exist: fine
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")  # an empty directory: fine
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="non-empty directory.*overwrite=true"):
        check_output(full)
    check_output(full, overwrite=True)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(OutputError, match="existing file"):
        check_output(tmp_path / "file")
    ckpt = tmp_path / "runs" / "policy"
    ckpt.mkdir(parents=True)
    for bad in (ckpt, ckpt / "export", tmp_path / "runs"):  # is, inside, contains the input
        with pytest.raises(OutputError, match="input"):
            check_output(bad, inputs=[ckpt], overwrite=True)
    assert (full / "mine.txt").read_text() == "keep" and (tmp_path / "file").read_text() == "keep"


def test_replace_dir_can_replace_a_file_the_caller_chose_to_overwrite(tmp_path):
    dest = tmp_path / "out"
    dest.write_text("a file where the directory goes")
    new = tmp_path / ".out.tmp"
    new.mkdir()
    (new / "model.onnx").write_text("graph")
    atomic_write.replace_dir(new, dest)
    assert dest.is_dir() and (dest / "model.onnx").read_text() == "graph" and not new.exists()
