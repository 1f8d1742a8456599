"""The Flux-layout AutoencoderKL against diffusers' (fp32), on a non-square image."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prx_jax.convert.errors import ConversionError
from prx_jax.convert.vae import load_vae, parse_vae_config
from prx_jax.models.vae import IdentityVAE
from prx_jax.testing_towers import random_vae

pytestmark = pytest.mark.parity
B, H, W = 2, 24, 40  # non-square; latents 6 x 10 after x4


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    model = random_vae(seed=5)
    model.save_pretrained(str(folder))
    return model, folder


def test_encoder_and_decoder_match_diffusers(saved):
    import torch

    model, folder = saved
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (B, 3, H, W)).astype(np.float32)
    with torch.no_grad():
        post = model.encode(torch.from_numpy(x)).latent_dist
        mean, logvar = post.mean.numpy(), post.logvar.numpy()
        z = mean + 0.3 * rng.standard_normal(mean.shape).astype(np.float32)
        dec = model.decode(torch.from_numpy(z)).sample.numpy()
    vae = load_vae(folder)
    got_mean, got_logvar = jax.jit(lambda v, a: v.moments(a))(vae, x.transpose(0, 2, 3, 1))
    err_mean = rel_err(np.asarray(got_mean).transpose(0, 3, 1, 2), mean)
    err_logvar = rel_err(np.asarray(got_logvar).transpose(0, 3, 1, 2), logvar)
    got_dec = jax.jit(lambda v, a: v.decoder(a))(vae, z.transpose(0, 2, 3, 1))
    err_dec = rel_err(np.asarray(got_dec).transpose(0, 3, 1, 2), dec)
    print(f"vae fp32: mean {err_mean:.2e} logvar {err_logvar:.2e} decoder {err_dec:.2e}")
    assert max(err_mean, err_logvar, err_dec) <= 1e-5

    # the public, channels-first, scaled interface: (z - shift) * scale and back
    cfg = model.config
    lat = np.asarray(vae.encode(jnp.asarray(x)))
    np.testing.assert_allclose(
        lat, (mean - cfg.shift_factor) * cfg.scaling_factor, rtol=1e-4, atol=1e-5
    )
    img = np.asarray(vae.decode(jnp.asarray((z - cfg.shift_factor) * cfg.scaling_factor)))
    assert rel_err(img, dec) <= 1e-5
    sampled = np.asarray(vae.encode(jnp.asarray(x), key=jax.random.key(0)))
    assert sampled.shape == lat.shape and not np.allclose(sampled, lat)


def test_identity_vae():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 12)).astype(np.float32)
    ident = IdentityVAE()
    np.testing.assert_array_equal(np.asarray(ident.decode(ident.encode(x))), x)
    assert ident.spatial_factor == 1 and ident.latent_channels == 3


def test_config_refusals(saved):
    _, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    assert parse_vae_config(cfg).spatial_factor == 4
    cases = [
        ({"_class_name": "AutoencoderDC"}, "AutoencoderDC"),
        ({"use_quant_conv": True}, "use_quant_conv=True"),
        ({"act_fn": "relu"}, "act_fn='relu'"),
        ({"up_block_types": ["AttnUpDecoderBlock2D"] * 3}, "AttnUpDecoderBlock2D"),
        ({"latents_mean": [0.0] * 16}, "latents_mean"),
        ({"new_thing": 1}, "new_thing"),
    ]
    for patch, word in cases:
        with pytest.raises(ValueError, match=word):
            parse_vae_config({**cfg, **patch})


def test_strict_weights(saved, tmp_path):
    from safetensors.torch import save_file

    model, folder = saved
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.pop("decoder.conv_out.bias")
    sd["quant_conv.weight"] = sd["encoder.conv_out.weight"].clone()
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConversionError) as e:
        load_vae(tmp_path)
    assert "decoder.conv_out.bias" in str(e.value) and "quant_conv.weight" in str(e.value)
