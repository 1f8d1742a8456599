"""Image decoding, normalisation to RGB, resizing, encoding and hashing (pure PIL / numpy).

`load_rgb` turns any image file into an upright 8-bit RGB `PIL.Image` or raises `SkipRecord`
with the reason the record is dropped. It refuses decompression bombs before decoding pixels,
applies the EXIF orientation, and converts CMYK, palette, alpha (composited on white),
grayscale and 16-bit images.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import fft

# PIL's own bomb threshold (~89.5 M pixels); above it we refuse the file instead of warning.
DEFAULT_MAX_PIXELS = 89_478_485


class SkipRecord(Exception):
    """A record that must be dropped; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` into an upright RGB image, or raise SkipRecord."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SkipRecord("decompression_bomb", str(e)) from e
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise SkipRecord("unreadable_image", str(e)) from e
        w, h = img.size
        if w * h > max_pixels:
            raise SkipRecord("decompression_bomb", f"{w}x{h} is over {max_pixels} pixels")
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SkipRecord("decompression_bomb", str(e)) from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            reason = "truncated_image" if "truncated" in str(e) else "corrupt_image"
            raise SkipRecord(reason, str(e)) from e


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode != "F" and arr.max(initial=0) > 255:  # 16-bit range
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """LANCZOS resize to (width, height) (the PRX export's filter)."""
    return img if img.size == tuple(size) else img.resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, image_format: str, quality: int = 95) -> bytes:
    """JPEG (at `quality`, 4:4:4 above 90) or PNG bytes."""
    buf = io.BytesIO()
    if image_format == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality > 90 else 2)
    elif image_format == "png":
        img.save(buf, "PNG")
    else:
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    return buf.getvalue()


def content_hash(img: Image.Image) -> str:
    """Exact-duplicate key: SHA-1 of the decoded RGB pixels and the size (ignores file encoding)."""
    h = hashlib.sha1(f"{img.size[0]}x{img.size[1]}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def perceptual_hash(img: Image.Image) -> int:
    """64-bit DCT pHash: the 8x8 lowest frequencies of a 32x32 grayscale, above their median."""
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low_8x8 = fft.dctn(gray, norm="ortho")[:8, :8].ravel()
    bits = low_8x8 > np.median(low_8x8[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
