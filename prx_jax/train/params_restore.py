"""The denoiser weights of a run, without its optimizer state: ``load_run(path, which="ema")``.

``path`` is a run folder (``config.yaml`` + ``checkpoints/<step>/``; the newest complete step is
used) or one checkpoint step folder (``run_dir/checkpoints/<step>``). The run's ``config.yaml`` is
read with ``load_config``; the PRX config is resolved as the trainer resolves it, from the config
files of the frozen towers (no tower weights are loaded). Only the ``state`` item's ``ema`` or
``params`` subtree is read from Orbax (a partial restore against the abstract model), so the
optimizer state is never allocated; shapes are checked against the checkpoint's metadata first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from prx_jax.config import Config, load_config
from prx_jax.models.prx_config import PRXConfig
from prx_jax.train.checkpoint import shape_diff

WHICH = ("ema", "params")


@dataclasses.dataclass
class RunWeights:
    cfg: Config  # the run's config.yaml
    prx: PRXConfig
    params: dict  # nested dict of arrays (``nnx.State.to_pure_dict()`` layout)
    graphdef: nnx.GraphDef
    step: int  # the checkpoint's step
    which: str  # "ema" or "params"
    checkpoint: Path  # the step folder read

    def model(self):
        """The denoiser as an NNX module (``nnx.merge`` of the graph and the restored weights)."""
        return nnx.merge(self.graphdef, self.params)


@dataclasses.dataclass(frozen=True)
class TowerDims:
    """What ``resolve_prx_config`` needs of the towers, read from config files only."""

    text_width: int
    latent_channels: int = 3
    spatial_factor: int = 1


def _tower_root(cfg: Config) -> Path:
    return Path(cfg.text.path or cfg.init_from or "")


def tower_dims(cfg: Config) -> TowerDims:
    if cfg.text.source == "demo":
        from prx_jax.data.demo import VOCABULARY
        from prx_jax.data.word_tokenizer import WordTokenizer
        from prx_jax.train.towers import demo_text_config

        width = demo_text_config(WordTokenizer(VOCABULARY, 1).vocab_size).hidden_size
    else:
        from prx_jax.convert.t5gemma import parse_t5gemma_config, text_encoder_folder

        folder = text_encoder_folder(_tower_root(cfg))
        width = parse_t5gemma_config(json.loads((folder / "config.json").read_text())).hidden_size
    if cfg.vae == "none":
        return TowerDims(width)
    from prx_jax.convert.vae import parse_vae_config, vae_folder

    vcfg = parse_vae_config(json.loads((vae_folder(_tower_root(cfg)) / "config.json").read_text()))
    return TowerDims(width, vcfg.latent_channels, vcfg.spatial_factor)


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, step_dir)`` for a run folder (its newest complete step) or a step folder."""
    path = Path(path).absolute()
    if (path / "state").is_dir() and (path.parent.parent / "config.yaml").exists():
        return path.parent.parent, path
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(
            f"{path}: neither a run folder (config.yaml) nor a checkpoint step folder "
            "(run_dir/checkpoints/<step>/state)"
        )
    steps = sorted(
        int(p.name)
        for p in (path / "checkpoints").glob("*")
        if p.name.isdigit() and (p / "state").is_dir() and (p / "commit_success.txt").exists()
    )
    if not steps:
        raise FileNotFoundError(f"{path}: no complete checkpoint under {path / 'checkpoints'}")
    return path, path / "checkpoints" / str(steps[-1])


def load_run(
    path: str | Path, which: str = "ema", mesh: Mesh | None = None, compute_dtype=None
) -> RunWeights:
    """The run's EMA (default) or raw parameters, as fp32 arrays on ``mesh`` (None: one device).

    ``compute_dtype`` overrides the run's ``model.compute_dtype`` (activation dtype)."""
    import orbax.checkpoint as ocp

    from prx_jax.train.loop import resolve_prx_config
    from prx_jax.train.state import make_model, param_sharding_tree

    if which not in WHICH:
        raise ValueError(f"which={which!r} must be one of {WHICH}")
    run_dir, step_dir = find_checkpoint(path)
    cfg = load_config(run_dir / "config.yaml")
    model_cfg = cfg.model
    if compute_dtype is not None:
        model_cfg = dataclasses.replace(model_cfg, compute_dtype=jnp.dtype(compute_dtype).name)
    prx = resolve_prx_config(cfg, tower_dims(cfg))
    builder = functools.partial(make_model, model_cfg, prx)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: builder(nnx.Rngs(0))), nnx.Param)
    if mesh is None:
        one = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one, abstract.to_pure_dict())
    else:
        shardings = param_sharding_tree(abstract, mesh)
    target = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, jnp.float32, sharding=s),
        abstract.to_pure_dict(),
        shardings,
    )
    state_dir = step_dir / "state"
    # The handler, not a PyTreeCheckpointer: that one looks for the step's _CHECKPOINT_METADATA
    # inside the item folder and logs a warning that it is missing (it is one level up).
    ckpt = ocp.PyTreeCheckpointHandler()
    meta = ckpt.metadata(state_dir)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    if which not in meta:
        raise KeyError(f"{state_dir}: no {which!r} in the train state (has {sorted(meta)})")
    diff = shape_diff(meta[which], target)
    if diff:
        raise ValueError(
            f"{state_dir} does not fit {run_dir / 'config.yaml'}; differing parameters:\n  "
            + "\n  ".join(diff)
        )
    restore_args = jax.tree.map(
        lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype), target
    )
    out = ckpt.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item={which: target}, restore_args={which: restore_args}, partial_restore=True
        ),
    )
    return RunWeights(cfg, prx, out[which], graphdef, int(step_dir.name), which, step_dir)
