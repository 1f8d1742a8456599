"""A run (or checkpoint) as a complete diffusers pipeline folder, with a model card.

Latent runs (``vae=pipeline``) become Photoroom's PRXPipeline layout; pixel runs (``vae=none``)
PRXPixelPipeline's. ``model_index.json`` names the official entries (``["prx", "T5GemmaEncoder"]``,
``["transformers", "GemmaTokenizerFast"]``), the text encoder carries the composite T5Gemma config.
Frozen components are copied from the base pipeline folder (``base_pipeline``, else the run's
``text.path`` / ``init_from``); the demo text tower (``text.source=demo``) is written from JAX,
with its word tokenizer as a WordLevel ``tokenizer.json`` (``["transformers",
"PreTrainedTokenizerFast"]``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from prx_jax.train.params_restore import RunWeights, load_run

SCHEDULER = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
TRANSFORMER = ["diffusers", "PRXTransformer2DModel"]
TEXT_ENCODER = ["prx", "T5GemmaEncoder"]
GEMMA_TOKENIZER = ["transformers", "GemmaTokenizerFast"]
WORD_TOKENIZER = ["transformers", "PreTrainedTokenizerFast"]


def diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.39.0"  # the first release with PRXPixelPipeline


def check_exportable(weights: RunWeights) -> str:
    """``"latent"`` or ``"pixel"``; refuses a run the diffusers pipelines cannot sample."""
    cfg = weights.cfg
    kind = "pixel" if cfg.vae == "none" else "latent"
    o = cfg.objective
    problems = []
    if kind == "latent" and o.prediction != "velocity":
        problems.append(
            "PRXPipeline samples velocity models: objective.prediction is " + o.prediction
        )
    if kind == "latent" and o.noise_scale != 1.0:
        problems.append(f"PRXPipeline starts from randn: objective.noise_scale is {o.noise_scale}")
    if kind == "pixel" and o.prediction != "x":
        problems.append(f"PRXPixelPipeline samples x-prediction models, not {o.prediction!r}")
    if problems:
        raise ValueError(f"{weights.checkpoint} cannot be exported:\n  " + "\n  ".join(problems))
    return kind


def base_folder(weights: RunWeights, base_pipeline: str | Path | None) -> Path | None:
    cfg = weights.cfg
    for cand in (base_pipeline, cfg.text.path, cfg.init_from):
        if cand is not None and (Path(cand) / "model_index.json").exists():
            return Path(cand)
    if base_pipeline is not None:
        raise FileNotFoundError(f"--base-pipeline {base_pipeline}: no model_index.json")
    return None


def _copy_text_encoder(src: Path, dst: Path) -> None:
    from prx_jax.publish.towers_export import composite_config

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    if config.get("model_type") != "t5gemma":  # a module config: diffusers needs the composite
        (dst / "config.json").write_text(json.dumps(composite_config(config), indent=2) + "\n")


def _copy_tokenizer(src: Path, dst: Path, max_length: int) -> None:
    shutil.copytree(src, dst)
    path = dst / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config["model_max_length"] = max_length  # PRXPipeline pads to the tokenizer's max length
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_text_tower(weights: RunWeights, base: Path | None, out: Path, dtype) -> list:
    """``text_encoder/`` and ``tokenizer/``; returns the tokenizer's model_index entry."""
    cfg = weights.cfg
    if cfg.text.source == "pipeline":
        if base is None:
            raise FileNotFoundError("text.source=pipeline: pass --base-pipeline (the tower folder)")
        _copy_text_encoder(base / "text_encoder", out / "text_encoder")
        _copy_tokenizer(base / "tokenizer", out / "tokenizer", cfg.text.max_length)
        entry = json.loads((base / "model_index.json").read_text()).get("tokenizer")
        if entry is None or entry[1] in ("GemmaTokenizer", "GemmaTokenizerFast"):
            return GEMMA_TOKENIZER  # the official entry (GemmaTokenizer is the runtime class)
        return list(entry)
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh

    from prx_jax.publish.towers_export import save_text_encoder, save_word_tokenizer
    from prx_jax.train.towers import build_towers

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    towers = build_towers(cfg, mesh)
    save_text_encoder(nnx.merge(towers.text_graphdef, towers.text_params), out / "text_encoder")
    save_word_tokenizer(towers.tokenizer, out / "tokenizer")
    return WORD_TOKENIZER


def model_index(kind: str, weights: RunWeights, tokenizer_entry: list) -> dict:
    cfg = weights.cfg
    head = {"_diffusers_version": diffusers_version(), "default_sample_size": cfg.data.resolution}
    common = {
        "scheduler": SCHEDULER,
        "text_encoder": TEXT_ENCODER,
        "tokenizer": tokenizer_entry,
        "transformer": TRANSFORMER,
    }
    if kind == "latent":
        return {
            "_class_name": "PRXPipeline",
            **head,
            **common,
            "vae": ["diffusers", "AutoencoderKL"],
        }
    return {
        "_class_name": "PRXPixelPipeline",
        **head,
        "prompt_max_tokens": cfg.text.max_length,
        "noise_scale": cfg.objective.noise_scale,
        **common,
    }


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    ema: bool = True  # the EMA weights (else the raw parameters)
    dtype: str = "bfloat16"  # the transformer's saved dtype
    base_pipeline: str | None = None  # frozen components from here (default: the run's folders)
    samples: int = 4  # sample grid images for the card (0: none)
    sample_steps: int | None = None  # None: the run's validation.num_steps
    repo_id: str | None = None  # for the card's usage snippet
    license: str = "apache-2.0"
    base_model: str | None = None  # Hub id for the card (default: read from the base pipeline)


def export_pipeline(run: str | Path, out: str | Path, options: ExportOptions = ExportOptions()):
    """Writes the pipeline folder ``out`` (must not exist or be empty); returns its path."""
    from prx_jax.convert.transformer import save_transformer
    from prx_jax.publish.model_card import write_card

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    weights = load_run(run, "ema" if options.ema else "params")
    kind = check_exportable(weights)
    base = base_folder(weights, options.base_pipeline)
    out.mkdir(parents=True, exist_ok=True)
    save_transformer(weights.model(), out / "transformer", format="diffusers", dtype=options.dtype)
    sched = {
        "_class_name": SCHEDULER[1],
        "_diffusers_version": diffusers_version(),
        "num_train_timesteps": 1000,
        "shift": weights.cfg.validation.sample_shift,
    }
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
    tokenizer_entry = write_text_tower(weights, base, out, options.dtype)
    if kind == "latent":
        vae_root = Path(weights.cfg.text.path or weights.cfg.init_from or base or "")
        if not (vae_root / "vae").is_dir():
            raise FileNotFoundError(f"{vae_root}: no vae/ folder to copy")
        shutil.copytree(vae_root / "vae", out / "vae")
    index = model_index(kind, weights, tokenizer_entry)
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_card(out, weights, kind, base, options)
    return out
