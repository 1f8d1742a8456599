"""Run in a subprocess: restore a run's newest checkpoint onto the mesh given by overrides and
write its parameters to an .npz (``python -m tests.e2e.dump_restored OUT.npz RUN_DIR k=v ...``)."""

import sys
from pathlib import Path

import jax
import numpy as np

from prx_jax.data import make_pipeline
from prx_jax.train.checkpoint import Checkpointer
from prx_jax.train.loop import _resume, setup
from tests.e2e.train_fixtures import tiny_config


def main(out: str, run_dir: str, *overrides: str) -> None:
    cfg = tiny_config(Path(run_dir), *overrides)
    run = setup(cfg)
    it = make_pipeline(cfg.data, batch_sharding=run.batch_sharding)
    state = _resume(cfg, Checkpointer(Path(run_dir), keep=5), run.state, run.state_shardings, it)
    flat = {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(state.params)
    }
    kernel = state.params["blocks"][0]["gate_proj"]["kernel"]
    print(f"devices={jax.device_count()} step={int(state.step)} spec={kernel.sharding.spec}")
    np.savez(out, **flat)


if __name__ == "__main__":
    main(*sys.argv[1:])
