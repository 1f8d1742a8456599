"""The PRX denoiser's configuration: the 13 fields of diffusers' ``PRXTransformer2DModel``.

``from_diffusers`` is strict: a ``config.json`` field we do not support is refused by name, so a
checkpoint of an architecture we do not implement can never load silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

DIFFUSERS_CLASS = "PRXTransformer2DModel"


@dataclasses.dataclass(frozen=True)
class PRXConfig:
    in_channels: int = 16  # latent channels: 16 Flux VAE, 32 DC-AE, 3 pixels
    patch_size: int = 2  # square patch: 2 Flux, 1 DC-AE, 16/32 pixels
    context_in_dim: int = 2304  # text-encoder width (T5Gemma-2B 2304, Qwen3-VL-2B 2048)
    hidden_size: int = 1792  # model width D
    mlp_ratio: float = 3.5  # MLP hidden = int(D * mlp_ratio)
    num_heads: int = 28  # head_dim = D / num_heads
    depth: int = 16  # number of PRX blocks
    axes_dim: tuple[int, ...] = (32, 32)  # RoPE dims per axis (rows, cols); sum = head_dim
    theta: int = 10000  # RoPE base
    time_factor: float = 1000.0  # sigma in [0, 1] is multiplied by this inside the sinusoid
    time_max_period: int = 10000  # max period of the timestep / resolution sinusoids
    bottleneck_size: int | None = None  # img_in as Linear(patch_dim->b) -> Linear(b->D)
    resolution_embeds: bool = False  # adds an MLP embedding of the input (H, W) to the timestep

    def __post_init__(self):
        object.__setattr__(self, "axes_dim", tuple(int(a) for a in self.axes_dim))
        for name in ("in_channels", "patch_size", "context_in_dim", "hidden_size", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"PRXConfig.{name} must be positive, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"PRXConfig.depth must be >= 0, got {self.depth}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"PRXConfig.hidden_size {self.hidden_size} must divide by "
                f"num_heads {self.num_heads}"
            )
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(
                f"PRXConfig.axes_dim {self.axes_dim} must sum to head_dim {self.head_dim}"
            )
        if len(self.axes_dim) != 2:
            raise ValueError(
                f"PRXConfig.axes_dim must have 2 entries (rows, cols): {self.axes_dim}"
            )
        if self.bottleneck_size is not None and self.bottleneck_size <= 0:
            raise ValueError(
                f"PRXConfig.bottleneck_size must be positive, got {self.bottleneck_size}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    def to_diffusers(self) -> dict[str, Any]:
        """The ``transformer/config.json`` content diffusers writes (13 args, sorted)."""
        d = dataclasses.asdict(self)
        d["axes_dim"] = list(self.axes_dim)
        return {"_class_name": DIFFUSERS_CLASS, **dict(sorted(d.items()))}

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> PRXConfig:
        """Strict: metadata keys (``_*``) are ignored, any other unknown key is an error."""
        class_name = config.get("_class_name", DIFFUSERS_CLASS)
        if class_name != DIFFUSERS_CLASS:
            raise ValueError(f"config _class_name is {class_name!r}, expected {DIFFUSERS_CLASS!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in fields)
        if unknown:
            raise ValueError(
                f"unsupported PRX config field(s) {unknown}; prx_jax supports {sorted(fields)}"
            )
        kw = {k: v for k, v in config.items() if k in fields}
        if kw.get("axes_dim") is None:
            kw.pop("axes_dim", None)  # diffusers' None means [32, 32]
        return cls(**kw)
