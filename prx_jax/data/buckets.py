"""PRX aspect-ratio buckets (spec §8.6) and the ArAwareResize target rule (spec §8.7).

A bucket is an image size `(width, height)` in pixels whose sides are multiples of the patch
size and whose patch count is close to `(resolution / patch)**2`.
`bucket_sizes(1024, 32)` is PRX's published list of 27 buckets; an image
goes to the bucket whose aspect ratio `w / h` is closest to its own.
"""

from __future__ import annotations

import math

Size = tuple[int, int]  # (width, height) in pixels, the order PRX publishes its bucket list in


def bucket_sizes(
    resolution: int,
    patch_size: int,
    min_aspect: float = 0.5,
    max_aspect: float = 2.0,
    divisible_by: int = 16,
) -> list[Size]:
    """PRX's `build_image_size_list`: every (w, h) bucket, sorted by aspect ratio w / h."""
    if resolution <= 0 or patch_size <= 0 or resolution % patch_size:
        raise ValueError(
            f"resolution ({resolution}) must be a positive multiple of patch_size ({patch_size})"
        )
    if not 0 < min_aspect <= 1 <= max_aspect:
        raise ValueError(f"need 0 < min_aspect <= 1 <= max_aspect, got {min_aspect}, {max_aspect}")
    b2 = (resolution // patch_size) ** 2
    grids: set[tuple[int, int]] = set()
    for pw in range(
        math.ceil(math.sqrt(b2 * min_aspect)), math.floor(math.sqrt(b2 * max_aspect)) + 1
    ):
        grids.add((pw, b2 // pw))
    for ph in range(
        math.ceil(math.sqrt(b2 / max_aspect)), math.floor(math.sqrt(b2 / min_aspect)) + 1
    ):
        grids.add((b2 // ph, ph))
    sizes = {
        (pw * patch_size, ph * patch_size)
        for pw, ph in grids
        if (pw * patch_size) % divisible_by == 0 and (ph * patch_size) % divisible_by == 0
    }
    if not sizes:
        raise ValueError(f"no bucket at resolution {resolution} with patch size {patch_size}")
    return sorted(sizes, key=lambda wh: wh[0] / wh[1])


def closest_bucket(width: int, height: int, buckets: list[Size]) -> Size:
    """ArAwareResize's target: the bucket whose w / h is closest (absolute difference).

    Ties go to the bucket listed first (the lower aspect ratio), so the choice is deterministic.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    return min(buckets, key=lambda wh: abs(wh[0] / wh[1] - aspect))


def bucket_name(size: Size) -> str:
    """Folder name of a bucket in a prepared dataset: `bucket_{W}x{H}` (width first, as PRX)."""
    return f"bucket_{size[0]}x{size[1]}"


def parse_bucket_name(name: str) -> Size:
    """Inverse of `bucket_name`; raises ValueError on anything else."""
    if not name.startswith("bucket_"):
        raise ValueError(f"not a bucket folder name: {name!r}")
    w, sep, h = name.removeprefix("bucket_").partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ValueError(f"not a bucket folder name: {name!r}")
    return int(w), int(h)
