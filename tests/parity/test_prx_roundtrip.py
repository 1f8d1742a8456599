"""diffusers -> prx_jax -> diffusers is lossless, and what we export loads in diffusers."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file

from prx_jax import load_transformer, save_transformer
from prx_jax.convert.__main__ import main as convert_main
from prx_jax.convert.prx_keys import diffusers_to_research
from prx_jax.convert.safetensors_io import read_index, read_tensor
from prx_jax.testing import FAMILIES, random_diffusers_transformer, random_inputs
from tests.helpers import rel_err

pytestmark = pytest.mark.parity


def _tensors(folder):
    """Every tensor of a diffusers folder, as raw bytes-exact numpy arrays (bf16 included)."""
    files = list(folder.glob("*.safetensors.index.json")) or list(folder.glob("*.safetensors"))
    return {k: read_tensor(v) for k, v in read_index(files[0]).items()}


@pytest.mark.parametrize("family", ["pixel-resolution", "latent-flux"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_bit_exact(tmp_path, family, dtype):
    cfg = FAMILIES[family]
    src = tmp_path / "src"
    random_diffusers_transformer(cfg, seed=2).to(dtype).save_pretrained(src)
    name = str(dtype).split(".")[-1]
    assert convert_main(["import", str(src), str(tmp_path / "jax")]) == 0
    assert (
        convert_main(["export", str(tmp_path / "jax"), str(tmp_path / "out"), "--dtype", name]) == 0
    )
    a, b = _tensors(src), _tensors(tmp_path / "out")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k
    src_cfg = json.loads((src / "config.json").read_text())
    out_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    drop = ("_diffusers_version", "_name_or_path")
    assert {k: v for k, v in src_cfg.items() if k not in drop} == {
        k: v for k, v in out_cfg.items() if k not in drop
    }


def test_export_loads_in_diffusers_with_same_output(tmp_path):
    from diffusers import PRXTransformer2DModel

    cfg = FAMILIES["pixel-bottleneck"]
    torch_model = random_diffusers_transformer(cfg, seed=3)
    torch_model.save_pretrained(tmp_path / "src")
    ours = load_transformer(tmp_path / "src")
    save_transformer(ours, tmp_path / "out", max_shard_size="20KB")  # sharded + index
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors.index.json").exists()
    reloaded = PRXTransformer2DModel.from_pretrained(tmp_path / "out").eval()
    x, t, txt, mask = random_inputs(cfg)
    with torch.no_grad():
        args = [torch.from_numpy(a) for a in (x, t, txt, mask)]
        ref, back = torch_model(*args).sample.numpy(), reloaded(*args).sample.numpy()
    assert np.array_equal(ref, back)
    assert rel_err(ours(x, t, txt, mask), back) <= 1e-5
    # ...and the sharded folder reads back in prx_jax too.
    again = load_transformer(tmp_path / "out")
    assert np.array_equal(np.asarray(again(x, t, txt, mask)), np.asarray(ours(x, t, txt, mask)))


def test_prx_jax_folder_round_trip_and_bf16_params(tmp_path):
    cfg = FAMILIES["latent-dcae"]
    random_diffusers_transformer(cfg, seed=4).save_pretrained(tmp_path / "src")
    ours = load_transformer(tmp_path / "src")
    save_transformer(ours, tmp_path / "jax", format="prx_jax")
    back = load_transformer(tmp_path / "jax")
    x, t, txt, mask = random_inputs(cfg)
    assert np.array_equal(np.asarray(back(x, t, txt, mask)), np.asarray(ours(x, t, txt, mask)))
    half = load_transformer(tmp_path / "jax", dtype="bfloat16")
    assert half.txt_in.kernel[...].dtype == jnp.bfloat16


def test_pipeline_root_uses_its_transformer(tmp_path):
    cfg = FAMILIES["latent-flux"]
    random_diffusers_transformer(cfg, seed=5).save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    model = load_transformer(tmp_path / "pipe")
    assert model.config == cfg


def test_research_checkpoint_import(tmp_path):
    """Research names (qk_norm.query_norm.scale, attn_out, k_norm.scale...) under the
    state.model.denoiser. prefix, plus an unrelated tensor outside the prefix."""
    from safetensors.numpy import save_file

    cfg = FAMILIES["latent-flux"]
    torch_model = random_diffusers_transformer(cfg, seed=6)
    torch_model.save_pretrained(tmp_path / "src")
    flat = np_load_file(tmp_path / "src" / "diffusion_pytorch_model.safetensors")
    research = {f"state.model.denoiser.{diffusers_to_research(k)}": v for k, v in flat.items()}
    assert any("qk_norm.query_norm.scale" in k for k in research)
    research["state.optimizer.step"] = np.zeros((1,), np.int64)
    save_file(research, tmp_path / "research.safetensors")
    with pytest.raises(ValueError, match="research checkpoint without a config"):
        load_transformer(tmp_path / "research.safetensors")
    cfg_path = tmp_path / "src" / "config.json"
    ours = load_transformer(tmp_path / "research.safetensors", config=str(cfg_path))
    x, t, txt, mask = random_inputs(cfg)
    with torch.no_grad():
        ref = torch_model(*[torch.from_numpy(a) for a in (x, t, txt, mask)]).sample.numpy()
    assert rel_err(ours(x, t, txt, mask), ref) <= 1e-5
