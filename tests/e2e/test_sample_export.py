"""Sampling and export end to end: tiny latent and pixel pipelines trained for 3 steps, exported as
diffusers pipelines, loaded by ``PRXPipeline`` / ``PRXPixelPipeline.from_pretrained``, and sampled
from the same initial noise (fp32, 28 steps, CFG 5): diffusers' images equal our sampler's."""

import json

import numpy as np
import pytest

from prx_jax.config import load_config
from prx_jax.publish.binning import BINS
from prx_jax.publish.model_card import front_matter
from prx_jax.publish.pipeline_export import ExportOptions, export_pipeline
from prx_jax.publish.sampling import SampleSpec, generate, load_model, resolve_size
from tests.e2e.train_fixtures import TINY
from tests.helpers import rel_err

pytestmark = [pytest.mark.e2e, pytest.mark.parity]
PROMPTS = ["a red cat on the blue house", "the sun over a dark river"]
SPEC = SampleSpec(steps=28, guidance_scale=5.0, height=32, width=48, binning=False)
COMMON = [
    "model.preset=tiny", "model.in_channels=null", "model.patch_size=null",
    "model.hidden_size=null", "model.num_heads=null", "model.depth=null", "model.axes_dim=null",
    "text.source=pipeline",
    "text.compute_dtype=float32", "data.global_batch_size=2", "train.steps=3", "mesh.fsdp=1",
    "train.log_every=1", "checkpoint.every=2", "checkpoint.keep=3",
]  # fmt: skip
KIND = {
    "latent": ["vae=pipeline", "objective.prediction=velocity", "data.patch_size=16"],
    "pixel": [
        "vae=none", "objective.prediction=x", "objective.noise_scale=2.0", "data.patch_size=16",
        "model.patch_size=4", "model.bottleneck_size=24", "model.time_factor=500.0",
        "model.time_max_period=5000",
    ],
    # the demo text tower (random T5Gemma + word tokenizer) exported from JAX, pixel model
    "demo": [
        "text.source=demo", "vae=none", "objective.prediction=x", "model.in_channels=3",
        "model.patch_size=8", "model.hidden_size=36", "model.num_heads=3", "model.depth=2",
        "model.axes_dim=[6,6]", "data.patch_size=32",
    ],
}  # fmt: skip


_BUILT: dict = {}  # kind -> (kind, run, export): each tiny run is trained once per module


def _build(kind, tmp_path_factory):
    if kind in _BUILT:
        return _BUILT[kind]
    from prx_jax.testing_towers import build_tiny_pipeline_folder
    from prx_jax.train.loop import train

    root = tmp_path_factory.mktemp(kind)
    towers = []
    if kind != "demo":
        base = build_tiny_pipeline_folder(root / "base", kind=kind)
        towers = [f"init_from={base}", f"text.path={base}"]
    # The built-in defaults (not configs/demo.yaml) + the trainer tests' tiny overrides.
    cfg = load_config(None, [*TINY, f"run_dir={root / 'run'}", *COMMON, *KIND[kind], *towers])
    train(cfg)
    out = export_pipeline(
        root / "run", root / "export", ExportOptions(dtype="float32", samples=2, sample_steps=2)
    )
    _BUILT[kind] = (("pixel" if kind == "demo" else kind), root / "run", out)
    return _BUILT[kind]


@pytest.fixture(scope="module", params=["latent", "pixel", "demo"])
def exported(request, tmp_path_factory):
    """Every kind, the demo text tower (exported from JAX) included."""
    return _build(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["latent", "pixel"])
def exported_from_pipeline(request, tmp_path_factory):
    """The kinds whose towers come from a diffusers pipeline folder."""
    return _build(request.param, tmp_path_factory)


def _diffusers_images(kind, folder, latents):
    """One pipeline call per image: PRXPipeline's CFG path repeats the timestep twice, not 2B
    times, so batches above 1 fail in diffusers 0.42.1."""
    import torch
    from diffusers import PRXPipeline, PRXPixelPipeline

    pipe = (PRXPixelPipeline if kind == "pixel" else PRXPipeline).from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            img = pipe(
                prompt, height=SPEC.height, width=SPEC.width, num_inference_steps=SPEC.steps,
                guidance_scale=SPEC.guidance_scale, latents=torch.from_numpy(latents[i : i + 1]),
                output_type="pt", use_resolution_binning=False,
            ).images  # fmt: skip
        out.append(img.float().numpy())
    return np.concatenate(out)


def test_layout(exported):
    kind, run, out = exported
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ("PRXPixelPipeline" if kind == "pixel" else "PRXPipeline")
    assert index["text_encoder"] == ["prx", "T5GemmaEncoder"]
    demo = "demo" in str(run)
    tok_class = "PreTrainedTokenizerFast" if demo else "GemmaTokenizerFast"
    assert index["tokenizer"] == ["transformers", tok_class]
    assert index["transformer"] == ["diffusers", "PRXTransformer2DModel"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert ("vae" in index) == (kind == "latent")
    if kind == "pixel":
        assert index["noise_scale"] == (1.0 if demo else 2.0) and index["prompt_max_tokens"] == 16
    else:
        tok = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
        assert tok["model_max_length"] == 16
    te = json.loads((out / "text_encoder" / "config.json").read_text())
    assert te["model_type"] == "t5gemma" and "encoder" in te
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["shift"] == 3.0
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert meta["license"] and "prx" in meta["tags"]
    assert "training steps | 3" in card and "demo dataset" in card
    assert (out / "samples" / "grid.png").exists()


def test_diffusers_reproduces_our_sampler(exported):
    kind, run, out = exported
    model = load_model(out)
    name = "demo (pixel, JAX-exported text tower)" if "demo" in str(run) else kind
    H, W, h, w = resolve_size(model, SPEC)
    f = model.scale_factor
    rng = np.random.default_rng(7)
    latents = rng.standard_normal((2, model.channels, h // f, w // f)).astype(np.float32)
    latents *= model.noise_scale
    ours = generate(model, PROMPTS, SPEC, latents=latents, batch_size=2)
    ref = _diffusers_images(kind, out, latents)
    if kind == "latent":  # PRXPipeline's "pt" output is postprocessed to [0, 1]
        ours = np.clip(ours / 2 + 0.5, 0, 1)
    err = rel_err(ours, ref)
    print(f"{name}: diffusers vs prx_jax, 28 steps CFG 5, fp32: max relative error {err:.2e}")
    assert err <= 1e-4
    # The run folder (EMA by default) samples what its fp32 export samples.
    from_run = generate(load_model(run), PROMPTS, SPEC, latents=latents)
    from_export = generate(model, PROMPTS, SPEC, latents=latents)
    assert rel_err(from_run, from_export) <= 1e-5


def test_run_weights_ema_and_params(exported_from_pipeline):
    from prx_jax.train.params_restore import load_run

    _, run, _ = exported_from_pipeline
    ema, raw = load_run(run, "ema"), load_run(run, "params")
    assert ema.step == raw.step == 3
    a, b = (np.concatenate([np.ravel(x) for x in _leaves(w.params)]) for w in (ema, raw))
    assert a.shape == b.shape and not np.array_equal(a, b)
    first = load_run(run / "checkpoints" / "2", "ema")
    assert first.step == 2


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sample_cli(exported_from_pipeline, tmp_path):
    from PIL import Image

    from prx_jax.sample import main

    kind, run, _ = exported_from_pipeline
    model = load_model(run)
    H, W, h, w = resolve_size(model, SampleSpec(height=32, width=48))
    f = model.scale_factor
    lat = np.random.default_rng(3).standard_normal((3, model.channels, h // f, w // f))
    np.save(tmp_path / "lat.npy", lat.astype(np.float32))
    (tmp_path / "prompts.txt").write_text("a green tree\n\nthe big dog\n")
    args = [
        "--model", str(run), "--prompt", "a red cat",
        "--prompts-file", str(tmp_path / "prompts.txt"),
        "--steps", "3", "--cfg", "4.0", "--size", "48x32", "--batch", "2",
        "--latents", str(tmp_path / "lat.npy"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(args) == 0
    pngs = sorted((tmp_path / "out").glob("0*.png"))
    assert len(pngs) == 3 and (tmp_path / "out" / "grid.png").exists()
    im = Image.open(pngs[2])
    assert im.size == (48, 32)
    meta = json.loads(im.text["prx_jax"])
    assert meta["prompt"] == "the big dog" and meta["steps"] == 3 and meta["guidance_scale"] == 4.0
    assert meta["weights"] == "ema" and meta["step"] == 3
    assert "Negative prompt:" in im.text["parameters"]


def test_binning_tables_are_diffusers():
    from diffusers.pipelines.prx import pipeline_prx, pipeline_prx_pixel

    assert BINS["latent"] == pipeline_prx.ASPECT_RATIO_BINS
    assert BINS["pixel"] == pipeline_prx_pixel.ASPECT_RATIO_BINS
