"""Text-to-image sampling from a run folder, a checkpoint step or a diffusers pipeline folder.

``load_model(path)`` gives a ``SamplingModel``: the denoiser, the prompt encoder, the decoder and
the pipeline semantics, which follow the diffusers pipeline the model is (or would be exported as):

* ``kind="latent"`` (PRXPipeline): velocity prediction, noise ``randn``, DeepFloyd-style prompt
  cleaning, the tokenizer's max length, bins for default sizes 256/512/1024.
* ``kind="pixel"`` (PRXPixelPipeline): x-prediction turned into a velocity with the 0.05 clamp,
  noise ``randn * noise_scale`` (2.0), light cleaning only, ``prompt_max_tokens``, 1024 bins only.

Both sample with diffusers' ``FlowMatchEulerDiscreteScheduler`` schedule (shift from the
scheduler config; the run's ``validation.sample_shift`` for run folders), feeding the model
``model_times``. ``generate`` runs the whole denoising loop (CFG included) in one jitted call per
batch shape. Legend: B images, C channels, H/W pixels, h/w model-input size, L tokens, D width.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prx_jax.diffusion.sampler import euler_sample
from prx_jax.diffusion.schedules import PIXEL_NOISE_SCALE, flow_match_sigmas, model_times
from prx_jax.publish.binning import BINS, bin_size, resize_and_crop

# FlowMatchEulerDiscreteScheduler options we reproduce only at these values.
_SCHEDULER_DEFAULTS = {
    "use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None,
    "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "time_shift_type": "exponential", "stochastic_sampling": False,
}  # fmt: skip


@dataclasses.dataclass
class SamplingModel:
    kind: str  # "latent" (PRXPipeline) | "pixel" (PRXPixelPipeline)
    graphdef: nnx.GraphDef  # the denoiser
    params: Any
    encode: Callable[[Sequence[str]], tuple[jax.Array, jax.Array]]  # prompts -> (emb, mask)
    decode: Callable[[jax.Array], jax.Array]  # model space -> images [B, 3, H, W] in [-1, 1]
    channels: int  # C of the model input
    scale_factor: int  # image pixels per model-input pixel (VAE factor, 1 for pixels)
    patch_size: int
    default_sample_size: int
    shift: float  # schedule shift
    noise_scale: float  # initial noise std
    prediction: str  # "velocity" | "x"
    source: str  # what was loaded (for metadata)
    extra: dict = dataclasses.field(default_factory=dict)  # step, ema, ... (for metadata)

    @property
    def multiple(self) -> int:
        return self.scale_factor * self.patch_size


def scheduler_shift(config: dict) -> tuple[float, int]:
    """``(shift, num_train_timesteps)`` of a scheduler config; refuses what we do not reproduce."""
    cls = config.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    bad = [f"_class_name={cls!r}"] if cls != "FlowMatchEulerDiscreteScheduler" else []
    bad += [
        f"{k}={config[k]!r} (supported: {v!r})"
        for k, v in _SCHEDULER_DEFAULTS.items()
        if k in config and config[k] != v
    ]
    if bad:
        raise ValueError("unsupported scheduler config: " + "; ".join(bad))
    return float(config.get("shift", 1.0)), int(config.get("num_train_timesteps", 1000))


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(graphdef, state, ids_BxL, mask_BxL):
    return nnx.merge(graphdef, state)(ids_BxL, mask_BxL)


@functools.partial(jax.jit, static_argnums=0)
def _decode_vae(graphdef, state, z):
    return nnx.merge(graphdef, state).decode(z)


def _tokenize(tokenizer, prompts: Sequence[str], light: bool):
    from prx_jax.text import PromptTokenizer, basic_clean, clean_text

    if isinstance(tokenizer, PromptTokenizer):
        return tokenizer.tokenize(list(prompts), skip_text_cleaning=light)
    # The demo word tokenizer: clean like the exported pipeline will before tokenizing.
    return tokenizer.tokenize([(basic_clean if light else clean_text)(p) for p in prompts])


def _from_pipeline(path: Path, compute_dtype) -> SamplingModel:
    from prx_jax.pipeline import load_pipeline

    pipe = load_pipeline(path, "float32", compute_dtype=compute_dtype)
    index = pipe.model_index
    pixel = index.get("_class_name") == "PRXPixelPipeline"
    if pixel:  # PRXPixelPipeline pads every prompt to prompt_max_tokens
        pipe.tokenizer.max_length = int(index.get("prompt_max_tokens", 256))
    shift, _ = scheduler_shift(pipe.scheduler_config)
    graphdef, params = nnx.split(pipe.transformer)
    return SamplingModel(
        kind="pixel" if pixel else "latent",
        graphdef=graphdef,
        params=params,
        encode=lambda prompts: pipe.encode_prompt(prompts, skip_text_cleaning=pixel),
        decode=pipe.decode_latents,
        channels=pipe.transformer.config.in_channels,
        scale_factor=pipe.vae_scale_factor,
        patch_size=pipe.transformer.config.patch_size,
        default_sample_size=int(index.get("default_sample_size") or (1024 if pixel else 512)),
        shift=shift,
        noise_scale=float(index.get("noise_scale", PIXEL_NOISE_SCALE)) if pixel else 1.0,
        prediction="x" if pixel else "velocity",
        source=str(path),
    )


def _from_run(path: Path, which: str, compute_dtype) -> SamplingModel:
    from jax.sharding import Mesh

    from prx_jax.train.params_restore import load_run
    from prx_jax.train.towers import build_towers

    weights = load_run(path, which, compute_dtype=compute_dtype)
    cfg = weights.cfg
    dt = jnp.dtype(compute_dtype or cfg.model.compute_dtype).name
    tower_cfg = dataclasses.replace(
        cfg,
        text=dataclasses.replace(cfg.text, compute_dtype=dt),
        model=dataclasses.replace(cfg.model, compute_dtype=dt),
    )
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    towers = build_towers(tower_cfg, mesh)
    pixel = cfg.vae == "none"

    def encode(prompts):
        ids, mask = _tokenize(towers.tokenizer, prompts, light=pixel)
        mask = jnp.asarray(mask)
        return _encode_text(towers.text_graphdef, towers.text_params, jnp.asarray(ids), mask), mask

    def decode(x):
        if pixel:
            return jnp.asarray(x)
        return _decode_vae(towers.vae_graphdef, towers.vae_params, jnp.asarray(x))

    return SamplingModel(
        kind="pixel" if pixel else "latent",
        graphdef=weights.graphdef,
        params=weights.params,
        encode=encode,
        decode=decode,
        channels=weights.prx.in_channels,
        scale_factor=towers.spatial_factor,
        patch_size=weights.prx.patch_size,
        default_sample_size=cfg.data.resolution,
        shift=cfg.validation.sample_shift,
        noise_scale=cfg.objective.noise_scale,
        prediction=cfg.objective.prediction,
        source=str(weights.checkpoint),
        extra={"step": weights.step, "weights": which, "towers": towers, "run": weights},
    )


def load_model(path: str | Path, which: str = "ema", compute_dtype="float32") -> SamplingModel:
    """A run folder (its newest checkpoint), a checkpoint step folder, or a diffusers pipeline
    folder. ``which``: the run's "ema" (default) or raw "params"; ``compute_dtype``: activations
    (fp32 default; None keeps the run's ``model.compute_dtype``)."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return _from_pipeline(path, compute_dtype)
    return _from_run(path, which, compute_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef", "guidance_scale", "prediction"))
def denoise(
    graphdef, params, x_init, sigmas, times, cond, uncond, *, guidance_scale, prediction
) -> jax.Array:
    """The whole Euler loop with CFG, as one compiled function."""
    model = nnx.merge(graphdef, params)
    return euler_sample(
        lambda x, t, e, m: model(x, t, e, m),
        x_init,
        sigmas,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        prediction=prediction,
        times=times,
    )


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    steps: int = 28
    guidance_scale: float = 5.0
    height: int | None = None  # None: the model's default sample size
    width: int | None = None
    seed: int = 0
    negative_prompt: str = ""
    binning: bool = True  # snap to the pipeline's aspect-ratio bins when it has them


def resolve_size(model: SamplingModel, spec: SampleSpec) -> tuple[int, int, int, int]:
    """``(H, W, H_gen, W_gen)``: the requested size and the (binned) size generated."""
    H = spec.height or model.default_sample_size
    W = spec.width or model.default_sample_size
    h, w = H, W
    table = BINS[model.kind].get(model.default_sample_size)
    if spec.binning and table is not None:
        h, w = bin_size(H, W, table)
    m = model.multiple
    if h % m or w % m:
        raise ValueError(
            f"size {h}x{w} (HxW) must divide by {m} (VAE factor x patch size); the model has no "
            f"aspect-ratio bins for default size {model.default_sample_size}"
        )
    return H, W, h, w


def initial_noise(model: SamplingModel, seed: int, index: int, h: int, w: int) -> np.ndarray:
    """Image ``index``'s starting x [C, h/f, w/f] (noise_scale applied): independent of batching."""
    f = model.scale_factor
    key = jax.random.fold_in(jax.random.key(seed), index)
    x = jax.random.normal(key, (model.channels, h // f, w // f), jnp.float32)
    return np.asarray(x * model.noise_scale)


def generate(
    model: SamplingModel,
    prompts: Sequence[str],
    spec: SampleSpec,
    latents: np.ndarray | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Images ``[N, 3, H, W]`` in [-1, 1] (float32, on the host), one per prompt.

    ``latents`` [N, C, h, w]: the starting x exactly as diffusers' ``latents=`` takes it (already
    scaled by the noise scale for pixel models); default ``initial_noise`` per image.
    ``batch_size`` images are denoised together (the last batch is padded, so one compile)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings")
    N = len(prompts)
    H, W, h, w = resolve_size(model, spec)
    f = model.scale_factor
    if latents is None:
        latents = np.stack([initial_noise(model, spec.seed, i, h, w) for i in range(N)])
    latents = np.asarray(latents, np.float32)
    want = (N, model.channels, h // f, w // f)
    if latents.shape != want:
        raise ValueError(f"latents have shape {latents.shape}; this sample needs {want}")
    sigmas = flow_match_sigmas(spec.steps, model.shift)
    times = model_times(sigmas)
    B = min(batch_size or N, N)
    use_cfg = spec.guidance_scale > 1.0
    out = []
    for start in range(0, N, B):
        chunk = list(prompts[start : start + B])
        n = len(chunk)
        chunk += [chunk[-1]] * (B - n)
        x = np.concatenate([latents[start : start + n], np.repeat(latents[-1:], B - n, 0)])
        cond = model.encode(chunk)
        uncond = model.encode([spec.negative_prompt] * B) if use_cfg else None
        x = denoise(
            model.graphdef,
            model.params,
            jnp.asarray(x, cond[0].dtype),
            sigmas,
            times,
            cond,
            uncond,
            guidance_scale=float(spec.guidance_scale),
            prediction=model.prediction,
        )
        images = resize_and_crop(model.decode(x).astype(jnp.float32), H, W)
        out.append(np.asarray(images)[:n])
    return np.concatenate(out)


def sample_metadata(model: SamplingModel, spec: SampleSpec, prompt: str, index: int) -> dict:
    H, W, h, w = resolve_size(model, spec)
    meta = {
        "prompt": prompt,
        "negative_prompt": spec.negative_prompt,
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "seed": spec.seed,
        "index": index,
        "size": f"{W}x{H}",
        "generated_size": f"{w}x{h}",
        "scheduler": f"FlowMatchEulerDiscrete shift={model.shift}",
        "pipeline": "PRXPixelPipeline" if model.kind == "pixel" else "PRXPipeline",
        "prediction": model.prediction,
        "noise_scale": model.noise_scale,
        "model": model.source,
    }
    meta.update({k: v for k, v in model.extra.items() if isinstance(v, (int, float, str))})
    return meta


def save_png(image_HxWx3: np.ndarray, path: Path, meta: dict) -> None:
    """A PNG with the generation parameters as text chunks: ``parameters`` (one readable line
    block, as other tools write it) and ``prx_jax`` (the same as JSON)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    rest = ", ".join(f"{k}: {v}" for k, v in meta.items() if k not in ("prompt", "negative_prompt"))
    info.add_text(
        "parameters", f"{meta['prompt']}\nNegative prompt: {meta['negative_prompt']}\n{rest}"
    )
    info.add_text("prx_jax", json.dumps(meta))
    Image.fromarray(image_HxWx3).save(path, pnginfo=info)


def sample_to_dir(
    model: SamplingModel,
    prompts: Sequence[str],
    spec: SampleSpec,
    out: str | Path,
    latents: np.ndarray | None = None,
    batch_size: int | None = None,
    cols: int = 4,
) -> list[Path]:
    """Writes ``out/NNNN.png`` per prompt (parameters in the PNG text chunks) and ``out/grid.png``;
    returns the image paths."""
    from PIL import Image

    from prx_jax.train.validate import grid, to_uint8

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = to_uint8(generate(model, prompts, spec, latents, batch_size))
    paths = []
    for i, (im, prompt) in enumerate(zip(images, prompts, strict=True)):
        path = out / f"{i:04d}.png"
        save_png(im, path, sample_metadata(model, spec, prompt, i))
        paths.append(path)
    Image.fromarray(grid(images, cols=min(cols, len(images)))).save(out / "grid.png")
    return paths
