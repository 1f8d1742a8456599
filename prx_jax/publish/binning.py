"""Aspect-ratio binning as the diffusers PRX pipelines do it (tables copied from diffusers 0.42.1
``pipelines/prx``; a parity test checks they are still equal), and the resize-and-crop back.

PRXPipeline has bins for ``default_sample_size`` 256, 512 and 1024; PRXPixelPipeline for 1024 only.
Keys are H/W ratios as strings, values ``[H, W]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ASPECT_RATIO_256_BIN = {
    "0.46": [160, 352], "0.6": [192, 320], "0.78": [224, 288], "1.0": [256, 256],
    "1.29": [288, 224], "1.67": [320, 192], "2.2": [352, 160],
}  # fmt: skip
ASPECT_RATIO_512_BIN = {
    "0.5": [352, 704], "0.57": [384, 672], "0.6": [384, 640], "0.68": [416, 608],
    "0.78": [448, 576], "0.88": [480, 544], "1.0": [512, 512], "1.13": [544, 480],
    "1.29": [576, 448], "1.46": [608, 416], "1.67": [640, 384], "1.75": [672, 384],
    "2.0": [704, 352],
}  # fmt: skip
ASPECT_RATIO_1024_BIN = {
    "0.49": [704, 1440], "0.52": [736, 1408], "0.53": [736, 1376], "0.57": [768, 1344],
    "0.59": [768, 1312], "0.62": [800, 1280], "0.67": [832, 1248], "0.68": [832, 1216],
    "0.78": [896, 1152], "0.83": [928, 1120], "0.94": [992, 1056], "1.0": [1024, 1024],
    "1.06": [1056, 992], "1.13": [1088, 960], "1.21": [1120, 928], "1.29": [1152, 896],
    "1.37": [1184, 864], "1.46": [1216, 832], "1.5": [1248, 832], "1.71": [1312, 768],
    "1.75": [1344, 768], "1.87": [1376, 736], "1.91": [1408, 736], "2.05": [1440, 704],
}  # fmt: skip
BINS = {
    "latent": {256: ASPECT_RATIO_256_BIN, 512: ASPECT_RATIO_512_BIN, 1024: ASPECT_RATIO_1024_BIN},
    "pixel": {1024: ASPECT_RATIO_1024_BIN},
}


def bin_size(height: int, width: int, ratios: dict[str, list[int]]) -> tuple[int, int]:
    """diffusers' ``classify_height_width_bin``: the bin whose ratio key is closest to H/W."""
    ar = float(height / width)
    closest = min(ratios.keys(), key=lambda r: abs(float(r) - ar))
    h, w = ratios[closest]
    return int(h), int(w)


def resize_and_crop(images_BxCxHxW: jax.Array, height: int, width: int) -> jax.Array:
    """diffusers' ``resize_and_crop_tensor``: bilinear (no antialias, half-pixel centres) resize
    so the image covers ``height x width``, then a centre crop."""
    B, C, H, W = images_BxCxHxW.shape
    if (H, W) == (height, width):
        return images_BxCxHxW
    ratio = max(height / H, width / W)
    rh, rw = int(H * ratio), int(W * ratio)
    x = jax.image.resize(images_BxCxHxW, (B, C, rh, rw), method="linear", antialias=False)
    y0, x0 = (rh - height) // 2, (rw - width) // 2
    return jnp.asarray(x)[:, :, y0 : y0 + height, x0 : x0 + width]
