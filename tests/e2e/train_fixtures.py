"""A tiny trainer config shared by the trainer tests (odd dims, 32 px demo, 16 tokens).

It starts from configs/demo.yaml, as ``python -m prx_jax.train`` does with no --config, so that
in-process and subprocess runs build the same model.
"""

from pathlib import Path

from prx_jax.config import load_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"

TINY = [
    "model.preset=tiny",
    "model.in_channels=3",
    "model.patch_size=8",
    "model.hidden_size=36",
    "model.num_heads=3",
    "model.depth=2",
    "model.axes_dim=[6,6]",
    "model.theta=10000",  # PRX's RoPE base (the demo's 8x8 grid uses 100)
    "model.compute_dtype=float32",
    "text.max_length=16",
    "text.compute_dtype=bfloat16",  # the trainer's default (the demo's CPU encoder runs fp32)
    "data.resolution=32",
    "data.patch_size=32",
    "data.global_batch_size=8",
    "optim.name=adamw",
    "optim.lr=1e-3",
    "optim.warmup_steps=5",
    "optim.schedule=constant",  # PRX's (the demo decays, wsd)
    "objective.uniform_prob=0.1",  # PRX's mixture (the demo turns it off): the golden covers it
    "ema.every=1",
    "ema.decay=0.9",
    "validation.every=0",
    "checkpoint.every=1000",
    "logging.progress=false",
    "logging.tensorboard=false",
    "mesh.data=1",  # the demo's -1 would take every fake device; tests set fsdp (and data)
]

# AdamW's eps 1e-15 turns gradients that are zero in exact arithmetic but round-off in floats
# (the zero-initialised output layers make many) into +-lr steps, and near-zero ones into steps
# whose size follows the round-off, so they depend on the reduction order, which differs between
# meshes and between in-process and cross-process (gloo) all-reduces by design. eps 1e-6 keeps a
# comparison of two such runs about what it tests (sharding, processes), not about round-off.
STABLE = "optim.eps=1e-6"


def tiny_config(run_dir, *overrides):
    return load_config(DEMO, [*TINY, f"run_dir={run_dir}", *overrides])
