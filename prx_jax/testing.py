"""Tiny models and random inputs shared by tests and benchmarks (torch is imported lazily).

``random_diffusers_transformer`` randomises *every* parameter: diffusers zero-initialises the adaLN
modulation, which would make every block the identity and hide bugs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prx_jax.models.prx_config import PRXConfig

# One small config per family diffusers' class accepts; odd-ish sizes so swapped axes cannot pass.
FAMILIES: dict[str, PRXConfig] = {
    "latent-flux": PRXConfig(
        in_channels=16, patch_size=2, context_in_dim=40, hidden_size=48, num_heads=3, depth=2,
        axes_dim=(8, 8),
    ),
    "latent-dcae": PRXConfig(
        in_channels=32, patch_size=1, context_in_dim=40, hidden_size=48, num_heads=3, depth=2,
        axes_dim=(6, 10), theta=500, mlp_ratio=2.5,
    ),
    "pixel-bottleneck": PRXConfig(
        in_channels=3, patch_size=4, context_in_dim=40, hidden_size=48, num_heads=3, depth=2,
        axes_dim=(8, 8), bottleneck_size=24, time_factor=500.0, time_max_period=5000,
    ),
    "pixel-resolution": PRXConfig(
        in_channels=3, patch_size=4, context_in_dim=40, hidden_size=48, num_heads=3, depth=2,
        axes_dim=(8, 8), bottleneck_size=20, resolution_embeds=True, mlp_ratio=3.0,
    ),
}  # fmt: skip


def random_diffusers_transformer(cfg: PRXConfig, seed: int = 0, dtype=None):
    """A diffusers ``PRXTransformer2DModel`` with every parameter drawn at random (fp32)."""
    import torch
    from diffusers import PRXTransformer2DModel

    d = cfg.to_diffusers()
    d.pop("_class_name")
    model = PRXTransformer2DModel(**d)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.5 if "norm" in name else 1.0 / max(p.shape[-1], 1) ** 0.5
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=gen))
    model.eval()
    return model if dtype is None else model.to(dtype)


def random_inputs(cfg: PRXConfig, batch=3, rows=10, cols=6, text_len=7, seed=0):
    """Non-square latents (rows x cols patches), distinct timesteps and ragged text masks."""
    rng = np.random.default_rng(seed)
    p = cfg.patch_size
    x = rng.standard_normal((batch, cfg.in_channels, rows * p, cols * p)).astype(np.float32)
    t = rng.uniform(0.05, 0.95, size=(batch,)).astype(np.float32)
    txt = rng.standard_normal((batch, text_len, cfg.context_in_dim)).astype(np.float32)
    mask = np.zeros((batch, text_len), bool)
    for i in range(batch):
        mask[i, : max(1, text_len - 2 * i)] = True  # rows with different numbers of real tokens
    return x, t, txt, mask


def save_random_diffusers(cfg: PRXConfig, folder: Path, seed: int = 0, **kw):
    model = random_diffusers_transformer(cfg, seed)
    model.save_pretrained(str(folder), **kw)
    return model
