"""Named PRX denoiser configurations.

Parameter counts (checked by a test against diffusers' class): prx-small 1,170,691,648;
prx-small-dcae 1,170,576,928; prx-pixel-small 1,177,215,744; prxpixel-7b 7,003,535,872.
"""

from __future__ import annotations

import dataclasses

from prx_jax.models.prx_config import PRXConfig

PRESETS: dict[str, PRXConfig] = {
    # Photoroom/prx-{256,512,1024}-t2i: Flux VAE latents (16 ch, x8), patch 2, T5Gemma-2B text.
    "prx-small": PRXConfig(),
    # The DC-AE variants (32 ch, x32), patch 1.
    "prx-small-dcae": PRXConfig(in_channels=32, patch_size=1),
    # The 24-hour speedrun: pixel-space x-prediction, patch 32, 256-d bottleneck.
    "prx-pixel-small": PRXConfig(in_channels=3, patch_size=32, bottleneck_size=256),
    # Photoroom/prxpixel-t2i: pixels, patch 16, Qwen3-VL-2B text (2048), resolution embeds.
    "prxpixel-7b": PRXConfig(
        in_channels=3,
        patch_size=16,
        context_in_dim=2048,
        hidden_size=3584,
        num_heads=28,
        depth=24,
        axes_dim=(64, 64),
        bottleneck_size=768,
        resolution_embeds=True,
    ),
    # Tests and smoke runs: odd-ish dims so a swapped axis cannot pass.
    "tiny": PRXConfig(
        in_channels=4,
        patch_size=2,
        context_in_dim=40,
        hidden_size=48,
        num_heads=3,
        depth=2,
        axes_dim=(8, 8),
    ),
}


def get_preset(name: str, **overrides) -> PRXConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown PRX preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
