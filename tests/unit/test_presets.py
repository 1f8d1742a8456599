"""Named presets: exact parameter counts, in our model and in diffusers' (on the meta device)."""

import pytest
import torch
from flax import nnx

from prx_jax.convert.transformer import abstract_model
from prx_jax.models.presets import PRESETS, get_preset
from prx_jax.models.prx import PRXTransformer, count_params

EXPECTED = {
    "prx-small": 1_170_691_648,
    "prx-small-dcae": 1_170_576_928,
    "prx-pixel-small": 1_177_215_744,
    "prxpixel-7b": 7_003_535_872,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name):
    from diffusers import PRXTransformer2DModel

    cfg = PRESETS[name]
    assert count_params(abstract_model(cfg)) == EXPECTED[name]
    d = cfg.to_diffusers()
    d.pop("_class_name")
    with torch.device("meta"):
        theirs = PRXTransformer2DModel(**d)
    assert sum(p.numel() for p in theirs.parameters()) == EXPECTED[name]


def test_tiny_preset_builds_and_unknown_preset_is_named():
    model = PRXTransformer(PRESETS["tiny"], rngs=nnx.Rngs(0))
    assert count_params(model) == count_params(abstract_model(PRESETS["tiny"]))
    with pytest.raises(KeyError, match="unknown PRX preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"hidden_size": 50, "num_heads": 3}, "must divide by"),
        ({"axes_dim": (8, 6)}, "must sum to head_dim"),
        ({"bottleneck_size": 0}, "bottleneck_size must be positive"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny", **kw)
