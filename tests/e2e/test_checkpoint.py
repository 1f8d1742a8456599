"""Checkpoints in-process: exact resume, failure behaviour, refusal of mismatched configs."""

import errno
import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prx_jax.train.checkpoint import Checkpointer, CheckpointError
from prx_jax.train.loop import train
from tests.e2e.train_fixtures import tiny_config

ONE_DEVICE = ("mesh.fsdp=1", "checkpoint.every=4", "train.log_every=2")


def saved_state(run_dir, step=None):
    """The train state saved at ``step`` (default: the newest), as numpy leaves."""
    root = run_dir / "checkpoints"
    step = (
        step if step is not None else max(int(p.name) for p in root.iterdir() if p.name.isdigit())
    )
    path = (root / str(step) / "state").absolute()
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # any topology -> this device
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    return jax.tree.map(np.asarray, ckptr.restore(path, target))


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


def test_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(straight, *ONE_DEVICE, "train.steps=8"))
    split = tmp_path / "split"
    train(tiny_config(split, *ONE_DEVICE, "train.steps=4"))
    train(tiny_config(split, *ONE_DEVICE, "train.steps=8"))  # resumes at 4
    a, b = saved_state(straight), saved_state(split)
    assert int(a["step"]) == int(b["step"]) == 8
    assert_trees_equal(a, b)  # params, optimizer state, EMA: data order and RNG included
    # the data iterator state was saved beside it
    assert (split / "checkpoints" / "8" / "data").exists()


def test_nan_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    train(tiny_config(tmp_path, *ONE_DEVICE, "train.steps=4"))
    before = saved_state(tmp_path, 4)
    with pytest.raises(FloatingPointError, match="at step 5"):
        train(tiny_config(tmp_path, *ONE_DEVICE, "train.steps=8", "objective.noise_scale=.nan"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    assert_trees_equal(before, saved_state(tmp_path, 4))


def test_nan_steps_can_be_skipped_and_counted(tmp_path):
    train(tiny_config(tmp_path, *ONE_DEVICE, "train.steps=4"))
    before = saved_state(tmp_path, 4)
    last = train(
        tiny_config(
            tmp_path, *ONE_DEVICE, "train.steps=8", "objective.noise_scale=.nan",
            "train.on_nonfinite=skip",
        )
    )  # fmt: skip
    assert last["skipped_steps"] == 4
    after = saved_state(tmp_path, 8)
    assert_trees_equal(before["params"], after["params"])


def test_resume_with_other_shapes_is_refused_naming_keys(tmp_path):
    train(tiny_config(tmp_path, *ONE_DEVICE, "train.steps=4"))
    with pytest.raises(CheckpointError, match=r"differing parameters[\s\S]*txt_in\.kernel"):
        train(
            tiny_config(
                tmp_path,
                *ONE_DEVICE,
                "train.steps=8",
                "model.hidden_size=48",
                "model.axes_dim=[8,8]",
            )
        )


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    train(tiny_config(tmp_path, *ONE_DEVICE, "train.steps=8"))
    newest = tmp_path / "checkpoints" / "8" / "state"
    for f in newest.rglob("*"):
        if f.is_file() and "manifest" in f.name:
            f.write_bytes(b"garbage")
    shutil.rmtree(newest / "d", ignore_errors=True)
    train(tiny_config(tmp_path, *ONE_DEVICE, "train.steps=12"))
    out = capsys.readouterr().out
    assert "checkpoints/8 cannot be restored" in out
    assert "resumed from" in out and "checkpoints/4" in out
    assert int(saved_state(tmp_path, 12)["step"]) == 12


def test_unwritable_checkpoint_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="not writable"):
        train(tiny_config(blocker / "run", *ONE_DEVICE, "train.steps=4"))


def test_full_disk_at_save_is_a_clear_error_and_keeps_the_previous(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, keep=2)
    state = {"w": np.ones(3, np.float32)}

    class _Iter:  # the smallest object grain's CheckpointSave accepts
        def get_state(self):
            return json.dumps({"i": 0}).encode()

        def set_state(self, s):
            pass

    ckpt.save(1, state, _Iter())
    ckpt.wait()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(CheckpointError, match=r"disk is full; the previous checkpoint \(step 1\)"):
        ckpt.save(2, state, _Iter())
    assert ckpt.steps() == [1]
