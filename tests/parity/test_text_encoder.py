"""The T5Gemma encoder against transformers' ``T5GemmaEncoder`` (fp32, eager attention)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prx_jax.convert.errors import ConversionError
from prx_jax.convert.t5gemma import load_text_encoder, parse_t5gemma_config
from prx_jax.parallel.rules import make_mesh
from prx_jax.testing_towers import TINY_T5GEMMA, random_t5gemma_encoder

pytestmark = pytest.mark.parity
B, T = 3, 13  # T > 2 * sliding_window (5): far tokens are outside each other's window


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("enc")
    model = random_t5gemma_encoder(seed=3)
    model.save_pretrained(str(folder))
    return model, folder


def padded_batch(side: str):
    rng = np.random.default_rng(0)
    ids = rng.integers(4, TINY_T5GEMMA["vocab_size"], size=(B, T))
    mask = np.zeros((B, T), bool)
    for i, n in enumerate((T, 8, 1)):  # full, padded beyond one window, a single token
        mask[i, :n] = True
    if side == "left":
        mask = mask[:, ::-1].copy()
    ids = np.where(mask, ids, 0)
    return ids, mask


def torch_forward(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("side", ["right", "left"])
def test_encoder_matches_transformers(saved, side):
    model, folder = saved
    ids, mask = padded_batch(side)
    want = torch_forward(model, ids, mask)
    enc = load_text_encoder(folder)
    got = np.asarray(jax.jit(lambda i, m: enc(i, m))(jnp.asarray(ids), jnp.asarray(mask)))
    err = rel_err(got, want)
    print(f"t5gemma fp32 {side} padding: max relative error {err:.2e}")
    assert err <= 1e-5
    # no mask: the pad token is hidden, as in transformers
    got_none = np.asarray(enc(jnp.asarray(ids)))
    assert rel_err(got_none, torch_forward(model, ids, ids != 0)) <= 1e-5


def test_sharded_bf16_encoder_runs_close(saved):
    model, folder = saved
    ids, mask = padded_batch("right")
    want = torch_forward(model, ids, mask)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    enc = load_text_encoder(folder, compute_dtype="bfloat16", mesh=mesh)
    kernel = enc.layers[0].mlp.gate_proj.kernel
    assert kernel.get_value().dtype == jnp.float32
    assert len(kernel.get_value().sharding.device_set) == 8
    got = np.asarray(enc(jnp.asarray(ids), jnp.asarray(mask)).astype(jnp.float32))
    assert rel_err(got, want) < 5e-2  # bf16 activations: a sanity bound, not parity


def test_composite_config_and_refusals(saved, tmp_path):
    _, folder = saved
    module = json.loads((folder / "config.json").read_text())
    composite = {"model_type": "t5gemma", "encoder": module, "decoder": module, "vocab_size": 7}
    assert parse_t5gemma_config(composite) == parse_t5gemma_config(module)
    assert parse_t5gemma_config(module).layer_types == (
        "sliding_attention", "full_attention", "sliding_attention",
    )  # fmt: skip
    for field, value, word in [
        ("hidden_activation", "gelu", "hidden_activation='gelu'"),
        ("attention_bias", True, "attention_bias=True"),
        ("rope_parameters", {"rope_type": "linear", "factor": 2.0}, "rope_type='linear'"),
        ("mystery_field", 1, "mystery_field"),
    ]:
        with pytest.raises(ValueError, match=word):
            parse_t5gemma_config({**module, field: value})
    with pytest.raises(ValueError, match="model_type"):
        parse_t5gemma_config({**module, "model_type": "gemma2"})


def test_strict_weights(tmp_path):
    from safetensors.torch import save_file

    model = random_t5gemma_encoder(seed=1)
    model.save_pretrained(str(tmp_path))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["layers.0.extra.weight"] = sd.pop("layers.1.mlp.up_proj.weight")
    sd["norm.weight"] = sd["norm.weight"][:-1].clone()
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError) as e:
        load_text_encoder(tmp_path)
    msg = str(e.value)
    assert "layers.1.mlp.up_proj.weight" in msg and "layers.0.extra.weight" in msg
    assert "norm.weight: source (39,)" in msg


def test_demo_encoder_exported_matches_transformers(tmp_path):
    """The demo's encoder (two sliding layers of window 4, post-attention norms at the context
    gain) written as a text_encoder/ folder computes in transformers what it computes here, on
    demo captions longer than two windows."""
    from diffusers.pipelines.prx import T5GemmaEncoder

    from prx_jax.data import demo
    from prx_jax.data.word_tokenizer import WordTokenizer
    from prx_jax.publish.towers_export import save_text_encoder
    from prx_jax.train.towers import DEMO_CONTEXT_GAIN, demo_text_encoder

    tok = WordTokenizer(demo.VOCABULARY, 32)
    enc = demo_text_encoder(tok.vocab_size)
    assert enc.config.layer_types == ("sliding_attention",) * 2 and enc.config.sliding_window == 4
    save_text_encoder(enc, tmp_path / "text_encoder")
    model = T5GemmaEncoder.from_pretrained(str(tmp_path / "text_encoder")).eval()
    norm = model.state_dict()["layers.1.post_self_attn_layernorm.weight"].numpy()
    np.testing.assert_array_equal(norm, DEMO_CONTEXT_GAIN - 1.0)
    ids, mask = tok.tokenize([demo.sample_scene(5, i).caption for i in range(6)] + [""])
    assert mask.sum(1).max() > 2 * 4 + 1  # some caption spans more than two windows
    want = torch_forward(model, ids, mask)
    got = np.asarray(jax.jit(lambda i, m: enc(i, m))(jnp.asarray(ids), jnp.asarray(mask)))
    err = rel_err(got, want)
    print(f"demo t5gemma fp32: max relative error {err:.2e}")
    assert err <= 1e-5
