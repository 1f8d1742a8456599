"""Per-record transforms of the training pipeline (pure numpy / PIL).

Letters: B batch, H height, W width, C = 3 channels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from prx_jax.data.buckets import Size, closest_bucket


def decode_image(data: bytes) -> Image.Image:
    """JPEG / PNG bytes -> RGB image (prepared records are already RGB; this also checks them)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


def ar_aware_resize(img: Image.Image, buckets: list[Size]) -> Image.Image:
    """PRX ArAwareResize: resize (no crop) to the bucket closest in aspect ratio, bilinear with
    antialiasing (PIL's bilinear filter widens its support when downscaling)."""
    size = closest_bucket(img.size[0], img.size[1], buckets)
    return img if img.size == size else img.resize(size, Image.Resampling.BILINEAR)


def to_model_range(images_BxHxWxC: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (NCHW, as diffusers)."""
    x = images_BxHxWxC.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def choose_caption(
    captions: dict[str, str], keys: tuple[tuple[str, float], ...], rng: np.random.Generator
) -> tuple[str, str]:
    """PRX caption choice: weighted among present keys; an empty caption keeps weight 1e-9.

    Raises KeyError when none of `keys` is present (the record then counts as bad)."""
    present = [(k, w if captions[k] else 1e-9) for k, w in keys if k in captions and w > 0]
    if not present:
        raise KeyError(f"none of the caption keys {[k for k, _ in keys]} in {sorted(captions)}")
    weights = np.array([w for _, w in present])
    key = present[int(rng.choice(len(present), p=weights / weights.sum()))][0]
    return key, captions[key]
