"""Orbax checkpoints of a run: the train state, the Grain iterator state and the step.

Saves are asynchronous (the loop blocks only for the device-to-host copy), every
``checkpoint.every`` steps and at the end; the newest ``checkpoint.keep`` are kept. A run resumes
from its newest complete checkpoint. Layout: ``run_dir/checkpoints/<step>/{state,data}``.
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, run_dir: Path, *, keep: int):
        self.directory = (run_dir / "checkpoints").absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state, data_iterator):
        """``abstract_state``: ShapeDtypeStructs carrying the target shardings (any mesh)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        return self.manager.restore(step, args=args)["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
