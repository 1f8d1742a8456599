"""Checks a picture against a demo caption: colour, shape, size, position and background.

The caption is parsed back into its stated attributes; the image is segmented by nearest palette
colour (robust to blur and noise), objects are the connected components, and each stated attribute
is judged: colour by majority vote over the object's pixels, shape by its fill ratio and how full
the corners of its bounding box are, size by its bounding box, position by its centroid's 3x3 cell,
background by the colours along the image border. Accuracy is the fraction of stated attributes
that hold.

    result = score(image_HxWx3, caption)   # result.accuracy in [0, 1], result.checks per attribute
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from scipy import ndimage

from prx_jax.data import demo

_OBJ_NAMES = list(demo.COLOURS)
_BG_NAMES = list(demo.BACKGROUNDS)
_PALETTE_Kx3 = np.array(
    [demo.COLOURS[c] for c in _OBJ_NAMES] + [demo.BACKGROUNDS[c] for c in _BG_NAMES], np.float32
)
# (fill ratio, corner fill) of each shape's mask, measured on rendered demo images.
_SHAPE_PROTOTYPES = {
    "circle": (0.79, 0.09),
    "square": (1.0, 0.98),
    "triangle": (0.53, 0.42),
    "star": (0.39, 0.0),
}
# Bounding-box side / shorter image side between small | medium | large (rendered: <= 0.23,
# 0.25-0.33, >= 0.40; the rendered box is a little smaller than the drawn one).
_SIZE_CUTS = (0.24, 0.37)
_MULTIWORD = sorted([*demo.POSITIONS, "light blue"], key=len, reverse=True)
_MIN_OBJECT_FRACTION = 0.004  # components smaller than this fraction of the image are noise


@dataclasses.dataclass(frozen=True)
class Claim:
    """One object stated in a caption; `size` is None when the caption does not state it."""

    shape: str
    colour: str | None
    size: str | None
    position: str | None


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    checks: dict[str, bool]  # e.g. {"object0.colour": True, "background": False}
    accuracy: float  # fraction of checks that hold (1.0 when the caption states nothing)


def parse_caption(caption: str) -> tuple[list[Claim], tuple[str, ...]]:
    """Stated objects (in order) and background colours of a demo caption."""
    text = re.sub(r"[^a-z ]", " ", caption.lower())
    text = " " + " ".join(text.split()) + " "
    for phrase in _MULTIWORD:
        text = text.replace(f" {phrase} ", f" {phrase.replace(' ', '_')} ")
    tokens = text.split()
    claims: list[Claim] = []
    background: list[str] = []
    pending: dict[str, str] = {}
    for tok in tokens:
        word = tok.replace("_", " ")
        if word in demo.BACKGROUNDS:
            background.append(word)
        elif word in demo.COLOURS:
            pending["colour"] = word
        elif word in demo.SIZES:
            pending["size"] = word
        elif word in demo.SHAPES:
            claims.append(Claim(word, pending.get("colour"), pending.get("size"), None))
            pending = {}
        elif word in demo.POSITIONS and claims and claims[-1].position is None:
            claims[-1] = dataclasses.replace(claims[-1], position=word)
    return claims, tuple(background)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, 3] or [3, H, W], got shape {image.shape}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.shape[-1] != 3:
        raise ValueError(f"expected 3 channels, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    if image.min() < 0:  # [-1, 1]
        image = (image + 1) * 127.5
    elif image.max() <= 1.0:  # [0, 1]
        image = image * 255
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _shape_of(mask_HxW: np.ndarray) -> str:
    ys, xs = np.nonzero(mask_HxW)
    box = mask_HxW[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill = box.mean()
    ch, cw = max(1, box.shape[0] // 5), max(1, box.shape[1] // 5)
    corners = [box[:ch, :cw], box[:ch, -cw:], box[-ch:, :cw], box[-ch:, -cw:]]
    corner_fill = float(np.mean([c.mean() for c in corners]))
    return min(
        _SHAPE_PROTOTYPES,
        key=lambda s: (
            (fill - _SHAPE_PROTOTYPES[s][0]) ** 2 + (corner_fill - _SHAPE_PROTOTYPES[s][1]) ** 2
        ),
    )


def _size_of(mask_HxW: np.ndarray) -> str:
    ys, xs = np.nonzero(mask_HxW)
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / min(mask_HxW.shape)
    return list(demo.SIZES)[int(np.searchsorted(_SIZE_CUTS, side))]


def _position_of(mask_HxW: np.ndarray) -> str:
    ys, xs = np.nonzero(mask_HxW)
    h, w = mask_HxW.shape
    cell = (min(2, int(3 * ys.mean() / h)), min(2, int(3 * xs.mean() / w)))
    return {v: k for k, v in demo.POSITIONS.items()}[cell]


def _detect(image_HxWx3: np.ndarray) -> tuple[list[dict[str, str]], set[str]]:
    """Objects (largest first) and the set of background colours found in the image."""
    pix = image_HxWx3.astype(np.float32)
    dist_HxWxK = ((pix[:, :, None, :] - _PALETTE_Kx3) ** 2).sum(-1)
    label_HxW = dist_HxWxK.argmin(-1)
    n_obj = len(_OBJ_NAMES)
    border = np.concatenate([label_HxW[0], label_HxW[-1], label_HxW[:, 0], label_HxW[:, -1]])
    bg_counts = np.bincount(border[border >= n_obj] - n_obj, minlength=len(_BG_NAMES))
    background = {_BG_NAMES[i] for i in np.nonzero(bg_counts >= 0.15 * max(1, bg_counts.sum()))[0]}
    comp_HxW, n_comp = ndimage.label(label_HxW < n_obj)
    objects = []
    min_area = _MIN_OBJECT_FRACTION * label_HxW.size
    for idx in range(1, n_comp + 1):
        mask = comp_HxW == idx
        if mask.sum() < min_area:
            continue
        colours = np.bincount(label_HxW[mask], minlength=n_obj)[:n_obj]
        objects.append(
            {
                "colour": _OBJ_NAMES[int(colours.argmax())],
                "shape": _shape_of(mask),
                "size": _size_of(mask),
                "position": _position_of(mask),
                "area": int(mask.sum()),
            }
        )
    objects.sort(key=lambda o: -int(o["area"]))
    return objects, background


def _judge(claim: Claim, found: dict[str, str] | None) -> dict[str, bool]:
    out = {}
    for attr in ("shape", "colour", "size", "position"):
        stated = getattr(claim, attr)
        if stated is not None:
            out[attr] = found is not None and found[attr] == stated
    return out


def score(image: np.ndarray, caption: str) -> ScoreResult:
    """Judge every attribute `caption` states about `image` (uint8 HWC, or float CHW/HWC in
    [-1, 1] or [0, 1])."""
    claims, stated_bg = parse_caption(caption)
    objects, found_bg = _detect(_as_uint8(image))
    checks: dict[str, bool] = {}
    if claims:
        found: list[dict[str, str] | None] = [*objects[: len(claims)]]
        found += [None] * (len(claims) - len(found))
        orders = [found] if len(claims) != 2 else [found, found[::-1]]
        best = max(
            ([_judge(c, f) for c, f in zip(claims, order, strict=True)] for order in orders),
            key=lambda js: sum(sum(j.values()) for j in js),
        )
        for i, judged in enumerate(best):
            checks.update({f"object{i}.{k}": v for k, v in judged.items()})
        # An extra object the caption does not mention is an error too.
        checks["object_count"] = len(objects) == len(claims)
    if stated_bg:
        checks["background"] = set(stated_bg) == found_bg
    accuracy = float(np.mean(list(checks.values()))) if checks else 1.0
    return ScoreResult(checks, accuracy)


def score_batch(images: np.ndarray, captions: list[str]) -> float:
    """Mean accuracy over a batch of images ([B, 3, H, W] or [B, H, W, 3]) and their captions."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return float(np.mean([score(im, c).accuracy for im, c in zip(images, captions, strict=True)]))
