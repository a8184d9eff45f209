"""Image decoding and normalisation shared by ingest, training and serving."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageRejected(Exception):
    """The bytes are not a usable image; ``reason`` is a short code for reports."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode(data: bytes, max_pixels: int) -> tuple[Image.Image, dict]:
    """Decode fully, apply EXIF orientation, convert to RGB.

    Returns the RGB image and the original attributes (width, height, mode, format, and
    ``unchanged``: True when the original already is an upright RGB image).
    Raises ImageRejected with reason: empty, decompression_bomb, not_an_image, corrupt.
    """
    if not data:
        raise ImageRejected("empty", "zero bytes")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, size = im.format, im.mode, im.size
            if size[0] * size[1] > max_pixels:
                raise ImageRejected("decompression_bomb", f"{size[0]}x{size[1]} pixels > {max_pixels}")
            im.load()  # forces a full decode: truncated files fail here
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation
            upright = im if orientation in (0, 1) else ImageOps.exif_transpose(im)
            rgb = to_rgb(upright)
            unchanged = upright is im and rgb is im
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "no image format recognised") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("corrupt", str(exc)) from None
    return rgb, {"width": size[0], "height": size[1], "mode": mode, "format": fmt or "", "unchanged": unchanged}


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB from any mode: palette and alpha via RGBA over white, 16-bit and float rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = Image.fromarray(((arr - lo) * scale).astype("uint8"), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def cap_side(im: Image.Image, max_side: int | None) -> Image.Image:
    if max_side and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def body_limits(max_image_bytes: int, max_images: int) -> dict[str, int]:
    """The largest request body each classify endpoint takes, multipart overhead included: the
    service enforces these, and the ``--follow`` proxy in front of it lets the largest through."""
    return {"/classify": max_image_bytes + (64 << 10), "/classify_batch": max_images * max_image_bytes + (256 << 10)}
