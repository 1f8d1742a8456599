"""Helpers for the data tests: tiny images of every kind prepare must handle."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(seed: int, width: int = 48, height: int = 48) -> Image.Image:
    """A distinct, photo-like (smooth) RGB image: random 4x4 colours upsampled."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 95, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# file name -> expected skip reason (None: kept)
MIXED_FOLDER = {
    "a_good1.png": None,
    "a_good2.jpg": None,
    "a_good3.webp": None,
    "a_good4_json.png": None,
    "b_cmyk.jpg": None,
    "b_palette.png": None,
    "b_rgba.png": None,
    "b_gray.png": None,
    "b_gray16.png": None,
    "b_exif_rotated.jpg": None,
    "c_unreadable.jpg": "unreadable_image",
    "c_corrupt.png": "corrupt_image",
    "c_truncated.jpg": "truncated_image",
    "c_bomb.png": "decompression_bomb",
    "c_too_small.png": "too_small",
    "c_too_wide.png": "aspect_ratio",
    "c_no_caption.png": "missing_caption",
    "c_empty_caption.png": "empty_caption",
    "z_duplicate.png": "duplicate",
    "z_near_duplicate.jpg": "near_duplicate",
}


def write_mixed_folder(root: Path) -> None:
    """One good file of every colour mode and one bad file of every kind, with sidecars."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        "a_good1.png": png_bytes(smooth_image(1)),
        "a_good2.jpg": jpeg_bytes(smooth_image(2, 64, 48)),
        "a_good4_json.png": png_bytes(smooth_image(4, 40, 56)),
        "b_cmyk.jpg": jpeg_bytes(smooth_image(5).convert("CMYK")),
        "b_rgba.png": png_bytes(smooth_image(7).convert("RGBA")),
        "b_gray.png": png_bytes(smooth_image(8).convert("L")),
        "c_unreadable.jpg": b"this is not an image at all",
        "c_bomb.png": bomb_png(),
        "c_too_small.png": png_bytes(smooth_image(11, 16, 16)),
        "c_too_wide.png": png_bytes(smooth_image(12, 120, 30)),
        "c_no_caption.png": png_bytes(smooth_image(13)),
        "c_empty_caption.png": png_bytes(smooth_image(14)),
        "z_duplicate.png": png_bytes(smooth_image(1)),
    }
    buf = io.BytesIO()
    smooth_image(3).save(buf, "WEBP", lossless=True)
    files["a_good3.webp"] = buf.getvalue()
    pal = smooth_image(6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    files["b_palette.png"] = buf.getvalue()
    gray16 = (np.asarray(smooth_image(9).convert("L"), np.uint16) * 257).astype(np.uint16)
    files["b_gray16.png"] = png_bytes(Image.fromarray(gray16))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    files["b_exif_rotated.jpg"] = jpeg_bytes(smooth_image(10, 64, 40), exif=exif.tobytes())
    corrupt = bytearray(png_bytes(smooth_image(15)))
    corrupt[100:200] = bytes(100)
    files["c_corrupt.png"] = bytes(corrupt)
    truncated = jpeg_bytes(smooth_image(16))
    files["c_truncated.jpg"] = truncated[: len(truncated) // 2]
    near = np.clip(np.asarray(smooth_image(2, 64, 48), np.int16) + 3, 0, 255).astype(np.uint8)
    files["z_near_duplicate.jpg"] = jpeg_bytes(Image.fromarray(near), quality=85)
    assert set(files) == set(MIXED_FOLDER)
    for name, data in files.items():
        (root / name).write_bytes(data)
        stem = root / Path(name).stem
        if name == "a_good4_json.png":
            stem.with_suffix(".json").write_text('{"caption": "json caption", "prompt": "p4"}')
        elif name == "c_empty_caption.png":
            stem.with_suffix(".txt").write_text("  \n")
        elif name != "c_no_caption.png":
            stem.with_suffix(".txt").write_text(f"a caption of {name}")
