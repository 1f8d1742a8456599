"""The run configuration: typed frozen dataclasses (the schema), YAML presets, dotted overrides.

    cfg = load_config("configs/demo.yaml", ["optim.lr=3e-4", "data.global_batch_size=64"])

Unknown keys and values of the wrong type are errors naming the dotted key. ``data.batch_size`` is
an alias of ``data.global_batch_size``. The resolved config is saved as ``run_dir/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from prx_jax.data.config import DataConfig

DTYPE_NAMES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A bad config key or value; the message names the dotted key."""


def _check(cond: bool, msg: str):
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"  # a prx_jax.PRESETS name; the fields below override it when set
    in_channels: int | None = None  # 3 for pixel models, else the VAE's latent channels
    patch_size: int | None = None  # square patch side in model-input units
    context_in_dim: int | None = None  # text-encoder width (set from the text tower if None)
    hidden_size: int | None = None  # model width D
    mlp_ratio: float | None = None  # MLP hidden = int(D * mlp_ratio)
    num_heads: int | None = None  # attention heads
    depth: int | None = None  # number of blocks
    axes_dim: tuple[int, ...] | None = None  # RoPE dims (rows, cols), summing to head_dim
    theta: int | None = None  # RoPE base
    time_factor: float | None = None  # sigma multiplier inside the timestep sinusoid
    time_max_period: int | None = None  # timestep sinusoid max period
    bottleneck_size: int | None = None  # two-layer patch embedding width
    resolution_embeds: bool | None = None  # add an (H, W) embedding to the timestep vector
    compute_dtype: str = "bfloat16"  # activation dtype (parameters stay fp32 masters)
    param_dtype: str = "float32"  # master-weight dtype
    attention_impl: str = "xla"  # "xla" everywhere, "cudnn" NVIDIA, "splash" TPU, "auto" picks
    remat: bool = False  # rematerialise each block in the backward pass (less memory)
    # with remat, what a block keeps: "full" (nothing) | "dots_saveable" (matmul outputs) |
    # "dots_with_no_batch_dims_saveable" (weight matmuls, not attention)
    remat_policy: str = "full"
    scan_blocks: bool = False  # stack the blocks and lax.scan over them (compiles one block)

    def __post_init__(self):
        _check(self.compute_dtype in DTYPE_NAMES, f"model.compute_dtype: {self.compute_dtype!r}")
        _check(self.param_dtype in DTYPE_NAMES, f"model.param_dtype: {self.param_dtype!r}")
        _check(
            self.attention_impl in ("xla", "cudnn", "splash", "auto"),
            f"model.attention_impl: {self.attention_impl!r} (xla | cudnn | splash | auto)",
        )
        policies = ("full", "dots_saveable", "dots_with_no_batch_dims_saveable")
        _check(
            self.remat_policy in policies,
            f"model.remat_policy: {self.remat_policy!r} ({' | '.join(policies)})",
        )

    def overrides(self) -> dict[str, Any]:
        skip = {
            "preset", "compute_dtype", "param_dtype", "attention_impl", "remat", "remat_policy",
            "scan_blocks",
        }  # fmt: skip
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }


@dataclasses.dataclass(frozen=True)
class TextConfig:
    source: str = "demo"  # "demo" (random frozen tiny T5Gemma + word tokenizer), "pipeline"
    path: str | None = None  # pipeline folder for "pipeline" (default: init_from)
    max_length: int = 256  # tokens per prompt (PRX: 256)
    compute_dtype: str = "bfloat16"  # the frozen encoder's activation dtype

    def __post_init__(self):
        _check(self.source in ("demo", "pipeline"), f"text.source: {self.source!r}")
        _check(self.max_length >= 1, f"text.max_length must be >= 1, got {self.max_length}")
        _check(self.compute_dtype in DTYPE_NAMES, f"text.compute_dtype: {self.compute_dtype!r}")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    prediction: str = "x"  # "x" (x-prediction, PRX pixel recipe) or "velocity" (latent models)
    timestep_shift: float = 3.0  # logit-normal timesteps shifted by s*t/(1+(s-1)t)
    uniform_prob: float = 0.1  # share of unshifted U[1e-3, 1) timesteps
    noise_scale: float = 1.0  # epsilon ~ N(0, noise_scale^2)
    caption_dropout: float = 0.1  # share of captions replaced by the empty prompt
    # x-prediction's training loss maps x0 to velocity with 1 / max(t, this): an x-space MSE
    # weighted by 1 / max(t, this)^2. Sampling (validation, sample, the exported pipeline) always
    # converts with PRXPixelPipeline's 0.05: a larger clamp there would under-step small t.
    x_clamp_min: float = 0.05
    loss_bins: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)  # timestep bins for loss logging

    def __post_init__(self):
        _check(self.prediction in ("x", "velocity"), f"objective.prediction: {self.prediction!r}")
        _check(self.timestep_shift > 0, "objective.timestep_shift must be > 0")
        _check(0 <= self.uniform_prob <= 1, "objective.uniform_prob must be in [0, 1]")
        _check(0 <= self.caption_dropout <= 1, "objective.caption_dropout must be in [0, 1]")
        _check(list(self.loss_bins) == sorted(self.loss_bins), "objective.loss_bins must increase")


@dataclasses.dataclass(frozen=True)
class EMAConfig:
    decay: float = 0.999  # ema <- decay * ema + (1 - decay) * params
    every: int = 10  # update every N optimizer steps (PRX: 10)

    def __post_init__(self):
        _check(0 <= self.decay < 1, f"ema.decay must be in [0, 1), got {self.decay}")
        _check(self.every >= 1, f"ema.every must be >= 1, got {self.every}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1  # data-parallel replicas
    fsdp: int = -1  # parameter/optimizer sharding; -1: all remaining devices
    tensor: int = 1  # tensor parallelism over heads / MLP
    # CPU backend only: ``python -m prx_jax.train`` splits the host into this many XLA devices
    # (--xla_force_host_platform_device_count, unless XLA_FLAGS already sets it); 0 leaves it.
    # Two devices with data parallelism run the 2-core demo step ~20% faster than one device
    # (less thread-pool synchronisation). Ignored on GPU/TPU and by library calls.
    cpu_devices: int = 0
    # CPU backend only: glibc keeps freed memory for reuse instead of page-faulting every step's
    # buffers in afresh (``prx_jax.host_memory``; the demo's step ~10% faster). The cost: the
    # process's resident memory stays near its peak. Ignored on GPU/TPU.
    cpu_keep_memory: bool = True

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        _check(all(s == -1 or s >= 1 for s in sizes), f"mesh sizes must be >= 1 or -1: {sizes}")
        _check(self.cpu_devices >= 0, f"mesh.cpu_devices must be >= 0, got {self.cpu_devices}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps
    seed: int = 0  # parameters, timesteps, noise and caption dropout derive from it
    grad_accum: int = 1  # micro-batches per step (global batch split inside the step)
    log_every: int = 10  # steps between metric lines (metrics fetched one step late)
    on_nonfinite: typing.Literal["stop", "skip"] = "stop"  # NaN/Inf loss: stop, or skip the update

    def __post_init__(self):
        _check(self.steps >= 0, f"train.steps must be >= 0, got {self.steps}")
        _check(self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between checkpoints (and one at the end)
    keep: int = 2  # most recent checkpoints kept
    keep_period: int | None = None  # also keep every checkpoint whose step divides by this

    def __post_init__(self):
        _check(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every}")
        _check(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    every: int = 500  # steps between validations (and one at the end); 0 disables
    prompts: tuple[str, ...] = ()  # fixed prompts; empty: demo captions (held-out seed)
    demo_prompts: int = 16  # how many held-out demo captions when `prompts` is empty
    num_steps: int = 28  # Euler steps
    guidance_scale: float = 5.0  # classifier-free guidance (> 1 enables it)
    sample_shift: float = 3.0  # inference schedule shift
    height: int = 0  # sample size in pixels (0: data.resolution)
    width: int = 0
    seed: int = 1138  # initial noise seed
    loss_batches: int = 4  # held-out batches for the per-bin validation loss

    def __post_init__(self):
        _check(self.every >= 0, f"validation.every must be >= 0, got {self.every}")
        _check(self.num_steps >= 1, f"validation.num_steps must be >= 1, got {self.num_steps}")
        _check(
            self.demo_prompts >= 1, f"validation.demo_prompts must be >= 1, got {self.demo_prompts}"
        )


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True  # event files in run_dir/tb (needs the `tensorboardX` package)
    wandb_project: str | None = None  # log to W&B when set and wandb is installed
    progress: bool = True  # progress bar on stderr


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = "runs/demo"  # everything the run writes goes here
    init_from: str | None = None  # diffusers pipeline/transformer folder or prx_jax weights
    resume: str = "auto"  # "auto" (newest checkpoint of run_dir), "never", or a run_dir to load
    model: ModelConfig = ModelConfig()
    text: TextConfig = TextConfig()
    vae: str = "none"  # "none" (pixel space) or "pipeline" (Flux VAE from text.path/init_from)
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: typing.Any = None  # prx_jax.train.optim.OptimConfig (filled in __post_init__)
    ema: EMAConfig = EMAConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    validation: ValidationConfig = ValidationConfig()
    logging: LoggingConfig = LoggingConfig()

    def __post_init__(self):
        from prx_jax.train.optim import OptimConfig

        if self.optim is None:
            object.__setattr__(self, "optim", OptimConfig())
        if self.optim.schedule != "constant" and self.optim.total_steps is None:
            # A decaying schedule ends with the run (a run shorter than the warm-up never decays).
            total = max(self.train.steps, self.optim.warmup_steps + 1)
            object.__setattr__(self, "optim", dataclasses.replace(self.optim, total_steps=total))
        _check(self.vae in ("none", "pipeline"), f"vae: {self.vae!r} (none | pipeline)")
        _check(
            self.data.global_batch_size % self.train.grad_accum == 0,
            f"data.global_batch_size {self.data.global_batch_size} must divide by "
            f"train.grad_accum {self.train.grad_accum}",
        )


_ALIASES = {"data.batch_size": "data.global_batch_size"}


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    if cls is Config:
        from prx_jax.train.optim import OptimConfig

        hints["optim"] = OptimConfig
    return hints


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Builds dataclass ``cls`` from nested dicts; unknown keys and bad types name the key."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kw = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kw)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def to_dict(cfg) -> dict:
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def apply_override(tree: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    key = _ALIASES.get(key.strip(), key.strip())
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """A YAML preset (or the built-in defaults when None) plus dotted ``key=value`` overrides."""
    tree: dict = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        tree = loaded
    data = tree.get("data")
    if isinstance(data, dict) and "batch_size" in data:
        data["global_batch_size"] = data.pop("batch_size")
    for o in overrides:
        apply_override(tree, o)
    return from_dict(Config, tree)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
