"""The exported pipeline's model card: ``README.md`` with YAML front matter, the training data
(from the prepare manifest), steps, resolution and key hyperparameters, a sample grid and usage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from prx_jax.publish.binning import BINS

CARD_GRID = "samples/grid.png"


def front_matter(text: str) -> dict[str, Any]:
    """The YAML between the leading ``---`` lines of a card (raises if there is none)."""
    if not text.startswith("---\n"):
        raise ValueError("the card does not start with YAML front matter")
    end = text.index("\n---\n", 4)
    meta = yaml.safe_load(text[4:end])
    if not isinstance(meta, dict):
        raise ValueError("the card's front matter is not a mapping")
    return meta


def training_data(cfg) -> dict[str, Any]:
    """What the run trained on: the demo set, or the prepare manifest's source and counts."""
    src = cfg.data.source
    if src == "demo":
        return {"source": "prx_jax built-in procedural demo dataset (shapes and colours)"}
    manifest = Path(src) / "manifest.json"
    if not manifest.exists():
        return {"source": str(src)}
    m = json.loads(manifest.read_text())
    return {
        "source": m.get("source", str(src)),
        "records": m.get("num_records"),
        "caption_keys": m.get("caption_keys"),
        "buckets": len(m.get("buckets", {})),
        "skipped": m.get("num_skipped"),
    }


def hub_base_model(base: Path | None) -> str | None:
    """A Hub id the base pipeline came from, when its model_index says so."""
    if base is None:
        return None
    name = json.loads((base / "model_index.json").read_text()).get("_name_or_path") or ""
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not Path(name).exists():
        return name
    return None


def hyperparameters(weights, kind: str) -> dict[str, Any]:
    cfg, prx = weights.cfg, weights.prx
    return {
        "pipeline": "PRXPixelPipeline" if kind == "pixel" else "PRXPipeline",
        "training steps": weights.step,
        "weights": "EMA" if weights.which == "ema" else "raw parameters",
        "resolution": cfg.data.resolution,
        "global batch size": cfg.data.global_batch_size,
        "optimizer": f"{cfg.optim.name}, lr {cfg.optim.lr:g}",
        "EMA": f"decay {cfg.ema.decay}, every {cfg.ema.every} steps",
        "objective": f"{cfg.objective.prediction}-prediction, timestep shift "
        f"{cfg.objective.timestep_shift}, noise scale {cfg.objective.noise_scale}",
        "denoiser": f"hidden {prx.hidden_size}, depth {prx.depth}, heads {prx.num_heads}, "
        f"patch {prx.patch_size}, in_channels {prx.in_channels}",
        "initialised from": cfg.init_from or "scratch",
        "text encoder": "demo T5Gemma-layout tower"
        if cfg.text.source == "demo"
        else f"T5Gemma ({cfg.text.max_length} tokens)",
    }


def _sample_grid(out: Path, weights, options) -> str | None:
    if not options.samples:
        return None
    from PIL import Image

    from prx_jax.publish.sampling import SampleSpec, generate, load_model
    from prx_jax.train.validate import default_prompts, grid, to_uint8

    v = weights.cfg.validation
    prompts = list(v.prompts or default_prompts(options.samples))[: options.samples]
    model = load_model(out, compute_dtype="float32")
    spec = SampleSpec(
        steps=options.sample_steps or v.num_steps, guidance_scale=v.guidance_scale, seed=v.seed
    )
    images = to_uint8(generate(model, prompts, spec))
    (out / CARD_GRID).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(images, cols=min(4, len(images)))).save(out / CARD_GRID)
    return f"Prompts: {'; '.join(prompts)}. {spec.steps} steps, guidance {spec.guidance_scale}."


def render_card(
    weights, kind: str, base_model: str | None, options, grid_note: str | None, title: str
) -> str:
    cfg = weights.cfg
    meta: dict[str, Any] = {"license": options.license}
    if base_model:
        meta["base_model"] = base_model
        meta["base_model_relation"] = "finetune"
    meta.update(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=["text-to-image", "diffusers", "prx", "prx_jax", "jax", "flax",
              "pixel-space" if kind == "pixel" else "latent-diffusion"],
    )  # fmt: skip
    pipe_cls = "PRXPixelPipeline" if kind == "pixel" else "PRXPipeline"
    repo = options.repo_id or "PATH_OR_REPO_ID"
    res = cfg.data.resolution
    binned = res in BINS[kind]
    call = f"num_inference_steps=28, guidance_scale={cfg.validation.guidance_scale}"
    if not binned:
        call += ", use_resolution_binning=False"
    data = training_data(cfg)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {options.repo_id or title}",
        "",
        f"A PRX text-to-image diffusion transformer ({pipe_cls}) trained with prx_jax "
        "(JAX / Flax NNX) and exported to diffusers.",
        "",
        "## Training data",
        "",
        *(f"* {k}: {v}" for k, v in data.items() if v is not None),
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in hyperparameters(weights, kind).items()),
        "",
    ]
    if grid_note:
        lines += ["## Samples", "", f"![samples]({CARD_GRID})", "", grid_note, ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "import torch",
        f"from diffusers import {pipe_cls}",
        "",
        f'pipe = {pipe_cls}.from_pretrained("{repo}", torch_dtype=torch.bfloat16)',
        f'image = pipe("a photo of a cat", {call}).images[0]',
        'image.save("out.png")',
        "```",
        "",
        "With prx_jax (the same sampler, in JAX):",
        "",
        "```bash",
        f'python -m prx_jax.sample --model {repo} --prompt "a photo of a cat" --steps 28 '
        f"--cfg {cfg.validation.guidance_scale} --size {res}x{res} --out samples/",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(out: Path, weights, kind: str, base: Path | None, options) -> Path:
    base_model = options.base_model or hub_base_model(base)
    note = _sample_grid(out, weights, options)
    path = out / "README.md"
    path.write_text(render_card(weights, kind, base_model, options, note, out.name))
    return path
