"""Orbax checkpoints of a run: the train state, the Grain iterator state and the step.

Saves are asynchronous (the loop blocks only for the device-to-host copy), every
``checkpoint.every`` steps, at the end and on preemption; the newest ``checkpoint.keep`` are kept,
plus every ``checkpoint.keep_period``-th. RNG needs no saving: it derives from (seed, step).
Layout: ``run_dir/checkpoints/<step>/{state,data}``. A newest checkpoint that fails to restore
(partial or corrupt) is reported and the one before it is used.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or does not fit the run; the message says which."""


def check_writable(directory: Path) -> None:
    """Fails before training starts when the checkpoint folder cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"folder {directory} is not writable: {e}") from None


class Checkpointer:
    def __init__(self, run_dir: Path, *, keep: int, keep_period: int | None = None):
        self.directory = (run_dir / "checkpoints").absolute()
        check_writable(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period, enable_async_checkpointing=True
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_iterator) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
        )
        try:
            self.manager.save(step, args=args, force=True)
        except OSError as e:
            raise _save_error(step, e, self.steps()) from None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise _save_error(None, e, self.steps()) from None

    def check_compatible(self, step: int, abstract_state) -> None:
        """Refuses a checkpoint whose parameter shapes differ from the run's, naming the keys."""
        meta = self.manager.item_metadata(step)["state"]
        diff = shape_diff(getattr(meta, "params", None) or meta["params"], abstract_state.params)
        if diff:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} does not fit this config; differing "
                "parameters:\n  " + "\n  ".join(diff)
            )

    def restore(self, step: int, abstract_state, data_iterator):
        """``abstract_state``: ShapeDtypeStructs carrying the target shardings (any mesh)."""
        self.check_compatible(step, abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        return self.manager.restore(step, args=args)["state"]

    def restore_latest(self, abstract_state, data_iterator, log=print):
        """The newest checkpoint that restores: ``(state, step)``, or ``(None, None)`` when there
        is none. When every checkpoint fails, the error lists why (nothing is overwritten)."""
        failures = []
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state, data_iterator), step
            except CheckpointError:
                raise
            except Exception as e:  # a partial or corrupt checkpoint: fall back, loudly
                why = f"{type(e).__name__}: {str(e)[:300]}"
                failures.append(f"step {step}: {why}")
                bad = self.directory / str(step)
                aside = bad.with_name(f"{step}.unrestorable")
                if jax.process_index() == 0:
                    bad.rename(aside)  # kept for inspection; the step can then be saved again
                log(f"warning: checkpoint {bad} cannot be restored ({why}); moved to {aside}")
                self.manager.reload()
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored:\n  " + "\n  ".join(failures)
            )
        return None, None

    def close(self) -> None:
        self.wait()
        self.manager.close()


def shape_diff(checkpoint_tree, config_tree) -> list[str]:
    """``key: checkpoint (shape), config (shape)`` for each leaf whose shape or presence differs."""
    have, want = _shapes(checkpoint_tree), _shapes(config_tree)
    return sorted(
        f"{k}: checkpoint {have.get(k)}, config {want.get(k)}"
        for k in have.keys() | want.keys()
        if have.get(k) != want.get(k)
    )


def _shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
        for path, leaf in flat
    }


def _save_error(step, e: OSError, steps: list[int]) -> CheckpointError:
    what = "the disk is full" if e.errno == errno.ENOSPC else str(e)
    kept = f"the previous checkpoint (step {steps[-1]}) is intact" if steps else "none was saved"
    at = f"at step {step}" if step is not None else "while finishing a save"
    return CheckpointError(f"checkpoint save failed {at}: {what}; {kept}")


def abstract_like(state, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
