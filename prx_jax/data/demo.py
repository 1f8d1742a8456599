"""The built-in demo dataset: procedural shape pictures with natural-language captions.

Every example is a pure function of `(seed, index)`: the scene (shapes, colours, sizes, positions,
background, caption wording) comes from `numpy.random.default_rng([seed, index])` and is rendered at
any `(width, height)`, so the demo needs no download and no preparation step. The vocabulary is kept
small and well separated so a tiny model learns it at 64 px, and `prx_jax.data.scorer` can check a
generated image against its caption.

    image_HxWx3, caption = demo_example(seed=0, index=7, width=64, height=64)
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
# Object colours: saturated and far apart in RGB, so nearest-palette classification survives blur.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 215),
    "yellow": (245, 215, 35),
    "purple": (140, 55, 185),
    "orange": (250, 135, 25),
}
# Background colours: neutral or pale, disjoint from the object colours (and from their names).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "light blue": (170, 205, 235),
    "beige": (225, 210, 170),
}
# Bounding-box side of an object as a fraction of the image's shorter side.
SIZES: dict[str, float] = {"small": 0.2, "medium": 0.31, "large": 0.46}
# Positions are the cells of a 3x3 grid: name -> (row, col).
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "at the top left"),
    "top": ("at the top", "near the top"),
    "top right": ("in the top right corner", "at the top right"),
    "left": ("on the left", "on the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "on the right side"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
_OPENERS = ("", "a picture of ", "an image of ", "a simple drawing of ", "there is ")
_BG_ONE = ("on a {bg} background", "with a {bg} background", "against a {bg} background")
_BG_TWO = ("on a {a} and {b} background", "on a background split into {a} and {b}")
_JITTER = 0.04  # centre jitter, as a fraction of the image side; keeps the centroid in its cell


@dataclasses.dataclass(frozen=True)
class DemoObject:
    shape: str
    colour: str
    size: str
    position: str
    cx: float  # centre as a fraction of the width, before clamping into the image
    cy: float  # centre as a fraction of the height


@dataclasses.dataclass(frozen=True)
class DemoScene:
    objects: tuple[DemoObject, ...]
    background: tuple[str, ...]  # one colour, or two for a split background (first = top / left)
    split: str  # "none", "horizontal" (top / bottom halves) or "vertical" (left / right halves)
    caption: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: DemoObject, with_size: bool, rng: np.random.Generator) -> str:
    words = f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"
    where = POSITION_PHRASES[obj.position][rng.integers(2)]
    return f"{_article(words)} {words} {where}"


def sample_scene(seed: int, index: int) -> DemoScene:
    """The scene of example `index`, independent of the resolution it is rendered at."""
    if index < 0:
        raise ValueError(f"demo index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, index])
    count = 2 if rng.random() < 0.3 else 1
    names = list(POSITIONS)
    while True:
        picks = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
        cells = [POSITIONS[p] for p in picks]
        # Two objects sit in cells two apart (no overlap), and are never both small-medium twins.
        if count == 1 or max(abs(cells[0][0] - cells[1][0]), abs(cells[0][1] - cells[1][1])) >= 2:
            break
    sizes = list(SIZES) if count == 1 else ["small", "medium"]
    objects = []
    for pos in picks:
        row, col = POSITIONS[pos]
        objects.append(
            DemoObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=list(COLOURS)[rng.integers(len(COLOURS))],
                size=sizes[rng.integers(len(sizes))],
                position=pos,
                cx=(col + 0.5) / 3 + rng.uniform(-_JITTER, _JITTER),
                cy=(row + 0.5) / 3 + rng.uniform(-_JITTER, _JITTER),
            )
        )
    bg_names = list(BACKGROUNDS)
    if rng.random() < 0.3:
        a, b = rng.choice(len(bg_names), size=2, replace=False)
        background = (bg_names[a], bg_names[b])
        split = ("horizontal", "vertical")[rng.integers(2)]
        bg_phrase = _BG_TWO[rng.integers(len(_BG_TWO))].format(a=background[0], b=background[1])
    else:
        background = (bg_names[rng.integers(len(bg_names))],)
        split = "none"
        bg_phrase = _BG_ONE[rng.integers(len(_BG_ONE))].format(bg=background[0])
    with_size = rng.random() < 0.75
    things = " and ".join(_object_phrase(o, with_size, rng) for o in objects)
    if rng.random() < 0.25:
        caption = f"{background[0]} background" if split == "none" else bg_phrase[5:]
        caption = f"{caption}, with {things}"
    else:
        caption = f"{_OPENERS[rng.integers(len(_OPENERS))]}{things} {bg_phrase}"
    return DemoScene(tuple(objects), background, split, caption)


def _shape_points(shape: str, cx: float, cy: float, d: float) -> list[tuple[float, float]]:
    if shape == "triangle":  # equilateral, pointing up, width d
        h = d * np.sqrt(3) / 2
        return [(cx, cy - h / 2), (cx + d / 2, cy + h / 2), (cx - d / 2, cy + h / 2)]
    if shape == "star":  # five points, width d, inner radius 0.4 of the outer one
        r_out = d / (2 * np.sin(np.deg2rad(72)))
        cy = cy + r_out * (1 - np.cos(np.deg2rad(36))) / 2  # centre the bounding box vertically
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else 0.4 * r_out
            a = np.deg2rad(-90 + 36 * k)
            pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        return pts
    raise ValueError(f"unknown polygon shape {shape!r}")


def render(scene: DemoScene, width: int, height: int) -> np.ndarray:
    """Draw `scene` as uint8 [height, width, 3] (small images drawn 4x larger, then downscaled)."""
    img, ss, dirty = _draw(scene, width, height)
    if ss == 1:
        return np.asarray(img, dtype=np.uint8)
    return _downscale(img, scene, ss, dirty)


def _background(scene: DemoScene, w: int, h: int) -> Image.Image:
    """The scene's background alone at w x h: one colour, or split into halves."""
    img = Image.new("RGB", (w, h), BACKGROUNDS[scene.background[0]])
    if scene.split == "horizontal":
        ImageDraw.Draw(img).rectangle([0, h // 2, w, h], fill=BACKGROUNDS[scene.background[1]])
    elif scene.split == "vertical":
        ImageDraw.Draw(img).rectangle([w // 2, 0, w, h], fill=BACKGROUNDS[scene.background[1]])
    return img


def _draw(scene: DemoScene, width: int, height: int) -> tuple[Image.Image, int, list]:
    """The scene drawn `ss` times larger (4 up to 256 px, else 1), and the box around each object
    (in drawn pixels) outside which the image is flat background."""
    if width < 8 or height < 8:
        raise ValueError(f"demo images need both sides >= 8 px, got {width}x{height}")
    ss = 4 if max(width, height) <= 256 else 1
    w, h = width * ss, height * ss
    img = _background(scene, w, h)
    draw = ImageDraw.Draw(img)
    short = min(w, h)
    dirty = []  # (x0, y0, x1, y1) around each object, in drawn pixels
    for obj in scene.objects:
        d = SIZES[obj.size] * short
        margin = 0.02 * short
        cx = float(np.clip(obj.cx * w, d / 2 + margin, w - d / 2 - margin))
        cy = float(np.clip(obj.cy * h, d / 2 + margin, h - d / 2 - margin))
        fill = COLOURS[obj.colour]
        box = [cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_shape_points(obj.shape, cx, cy, d), fill=fill)
        dirty.append((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2))  # PIL's edge pixels
    return img, ss, dirty


def _downscale(img: Image.Image, scene: DemoScene, ss: int, dirty: list) -> np.ndarray:
    """`img.resize(size / ss, BOX)`, pixel for pixel, at a fraction of the cost: only the blocks
    under an object are averaged (PIL's box filter of an integer factor gives each output pixel
    the same value from a crop as from the whole image); every other pixel is its flat background
    colour. A split that falls inside a pixel (an odd side) takes the whole-image resize."""
    width, height = img.width // ss, img.height // ss
    size = img.height if scene.split == "horizontal" else img.width
    if scene.split != "none" and (size // 2) % ss:
        return np.asarray(img.resize((width, height), Image.Resampling.BOX), dtype=np.uint8)
    out = _background(scene, width, height)  # the split is on a pixel edge: same halves
    for x0, y0, x1, y1 in dirty:
        x0, y0 = max(0, int(x0 // ss)), max(0, int(y0 // ss))
        x1, y1 = min(width, int(-(-x1 // ss))), min(height, int(-(-y1 // ss)))
        block = img.crop((x0 * ss, y0 * ss, x1 * ss, y1 * ss))
        out.paste(block.resize((x1 - x0, y1 - y0), Image.Resampling.BOX), (x0, y0))
    return np.asarray(out, dtype=np.uint8)


def demo_example(seed: int, index: int, width: int, height: int) -> tuple[np.ndarray, str]:
    """Example `index`: (uint8 image [height, width, 3], caption)."""
    scene = sample_scene(seed, index)
    return render(scene, width, height), scene.caption


def caption_corpus(count: int, seed: int = 0) -> list[str]:
    """`count` demo captions (e.g. to fit a tokenizer)."""
    return [sample_scene(seed, i).caption for i in range(count)]


def _vocabulary() -> tuple[str, ...]:
    words: set[str] = set()
    texts = [*SHAPES, *COLOURS, *BACKGROUNDS, *SIZES, "an", "with", "background", "and"]
    texts += [p for phrases in POSITION_PHRASES.values() for p in phrases]
    texts += [*_OPENERS, *_BG_ONE, *_BG_TWO]
    for text in texts:
        for word in text.replace("{bg}", "").replace("{a}", "").replace("{b}", "").split():
            words.add(word.strip(","))
    return tuple(sorted(words))


# Every word a demo caption can contain (captions also contain "," between words).
VOCABULARY: tuple[str, ...] = _vocabulary()
