"""A tiny PRXPipeline folder, saved as Photoroom's converter writes it, loads in one call and its
prompt embeddings, latents and images equal diffusers'."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prx_jax
from prx_jax.models.vae import IdentityVAE
from prx_jax.testing_towers import build_tiny_pipeline_folder

pytestmark = pytest.mark.parity
PROMPTS = [
    "",
    "A PHOTO of a <person> at https://example.com — ***SALE*** &amp; free shipping!!",
    " ".join(["the red cat sits on a blue house under the bright sky"] * 30),
]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("pipe") / "prx", kind="latent")


@pytest.fixture(scope="module")
def diffusers_pipe(latent_folder):
    from diffusers import PRXPipeline

    return PRXPipeline.from_pretrained(str(latent_folder))


def test_folder_layout(latent_folder):
    index = json.loads((latent_folder / "model_index.json").read_text())
    assert index["text_encoder"] == ["prx", "T5GemmaEncoder"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    te = json.loads((latent_folder / "text_encoder" / "config.json").read_text())
    assert te["model_type"] == "t5gemma" and "encoder" in te


def test_encode_prompt_matches_diffusers(latent_folder, diffusers_pipe):
    import torch

    pipe = prx_jax.load_pipeline(latent_folder)
    assert pipe.scheduler_config["shift"] == 3.0
    assert pipe.model_index["default_sample_size"] == 256
    emb, mask = pipe.encode_prompt(PROMPTS)
    with torch.no_grad():
        want_emb, want_mask, _, _ = diffusers_pipe.encode_prompt(
            PROMPTS, device="cpu", do_classifier_free_guidance=False
        )
    np.testing.assert_array_equal(np.asarray(mask), want_mask.numpy())
    assert emb.shape == (3, 256, 40) and mask.shape == (3, 256) and mask.dtype == jnp.bool_
    err = rel_err(emb, want_emb.numpy())
    print(f"pipeline encode_prompt fp32: max relative error {err:.2e}")
    assert err <= 1e-5


def test_images_and_latents_match_diffusers(latent_folder, diffusers_pipe):
    import torch

    pipe = prx_jax.load_pipeline(latent_folder)
    vae = diffusers_pipe.vae
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)
    lat = pipe.encode_images(x)
    assert lat.shape == (2, pipe.latent_channels, 4, 6) and pipe.vae_scale_factor == 4
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(x)).latent_dist.mean
        want_lat = (mean - vae.config.shift_factor) * vae.config.scaling_factor
        # what PRXPipeline does before decoding
        z = torch.from_numpy(np.array(lat)) / vae.config.scaling_factor + vae.config.shift_factor
        want_img = vae.decode(z).sample.numpy()
    assert rel_err(lat, want_lat.numpy()) <= 1e-5
    assert rel_err(pipe.decode_latents(lat), want_img) <= 1e-5
    sampled = pipe.encode_images(x, sample=True, key=jax.random.key(0))
    assert sampled.shape == lat.shape
    with pytest.raises(ValueError, match="key"):
        pipe.encode_images(x, sample=True)
    # the denoiser takes what the towers produce
    emb, mask = pipe.encode_prompt(["a cat"])
    out = pipe.transformer(lat[:1], jnp.array([0.5]), emb, mask)
    assert out.shape == lat[:1].shape


def test_pixel_pipeline_uses_the_identity(tmp_path):
    folder = build_tiny_pipeline_folder(tmp_path / "pix", kind="pixel")
    pipe = prx_jax.load_pipeline(folder)
    assert isinstance(pipe.vae, IdentityVAE) and pipe.vae_scale_factor == 1
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(pipe.decode_latents(pipe.encode_images(x))), x)


@pytest.mark.parametrize(
    "patch, words",
    [
        ({"vae": ["diffusers", "AutoencoderDC"]}, ["'vae'", "AutoencoderDC", "DC-AE"]),
        (
            {"text_encoder": ["transformers", "Qwen3VLTextModel"]},
            ["'text_encoder'", "Qwen3VLTextModel", "Qwen3-VL"],
        ),
        ({"image_encoder": ["transformers", "SiglipModel"]}, ["'image_encoder'", "SiglipModel"]),
        ({"scheduler": ["diffusers", "DDIMScheduler"]}, ["'scheduler'", "DDIMScheduler"]),
        ({"_class_name": "FluxPipeline"}, ["FluxPipeline"]),
    ],
)
def test_refuses_unsupported_components(latent_folder, tmp_path, patch, words):
    folder = tmp_path / "copy"
    shutil.copytree(latent_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **patch}))
    with pytest.raises(ValueError) as e:
        prx_jax.load_pipeline(folder)
    for w in words:
        assert w in str(e.value)
