"""Built-in datasets, generated on this machine (nothing is downloaded): ``builtin:<name>``.

* ``digits``: scikit-learn's bundled handwritten digits, 1,797 images of 8x8 grayscale, 10 classes.
  Easy: any backbone reaches about 1.000, so it shows the pipeline, not the trade-offs.
* ``shapes``: 10 classes of shapes (circle, ring, crescent, triangle, square, pentagon, hexagon,
  star, cross, arrow), 300 images each at 64x64 RGB, drawn at a random size, position and
  rotation over textured, noisy backgrounds with clutter. Deterministic: image ``i`` of a class
  depends only on (seed, class, i). Pentagon vs hexagon or circle vs ring need resolution and
  depth, so image size, backbone and fine-tuning depth change accuracy and cost visibly.

Each is written once as ``<class>/<name>.png`` under ``.frugalml/builtin/<name>/`` (a marker file
records what was generated; another version of the generator regenerates it).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from frugalml.core.config import BUILTIN_NAMES as NAMES
from frugalml.core.console import Progress
from frugalml.core.errors import ConfigError
from frugalml.core.fsutil import atomic_write_bytes, atomic_write_text
from frugalml.data.images import png_bytes

SHAPES = ("circle", "ring", "crescent", "triangle", "square", "pentagon", "hexagon", "star", "cross", "arrow")
SHAPES_PER_CLASS = 300
SHAPES_SIZE = 64
SHAPES_SEED = 0
_SHAPES_VERSION = f"shapes v1 seed={SHAPES_SEED} n={SHAPES_PER_CLASS} size={SHAPES_SIZE}"


def builtin_dir(name: str, root: str | os.PathLike = ".") -> Path:
    return Path(root) / ".frugalml" / "builtin" / name


def name_of(source: str) -> str:
    name = source[len("builtin:") :]
    if name not in NAMES:
        raise ConfigError(
            f"unknown built-in dataset {source!r}; choose one of " + ", ".join(f"builtin:{n}" for n in NAMES)
        )
    return name


def materialize(source: str, root: str | os.PathLike = ".") -> Path:
    """The folder holding ``builtin:<name>``, generated on first use."""
    name = name_of(source)
    dest = builtin_dir(name, root)
    return write_digits(dest) if name == "digits" else write_shapes(dest)


def _complete(dest: Path, stamp: str) -> bool:
    marker = dest / ".complete"
    if marker.exists() and marker.read_text().strip() == stamp:
        return True
    if dest.exists():  # another generator version, or an interrupted write: start over
        shutil.rmtree(dest)
    return False


def write_digits(dest: str | os.PathLike) -> Path:
    """scikit-learn's bundled handwritten digits as ``<class>/<name>.png`` (8x8 grayscale)."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn: ~2 s to import

    dest = Path(dest)
    stamp = "scikit-learn load_digits"
    if (dest / ".complete").exists():  # older checkouts wrote the same files with this marker
        return dest
    _complete(dest, stamp)
    digits = load_digits()
    for i, (img, target) in enumerate(zip(digits.images, digits.target)):
        arr = np.clip(img * (255.0 / 16.0), 0, 255).astype("uint8")
        atomic_write_bytes(dest / str(target) / f"digit_{i:04d}.png", png_bytes(Image.fromarray(arr, mode="L")))
    atomic_write_text(dest / ".complete", stamp + "\n")
    return dest


# -- shapes ---------------------------------------------------------------------------------------
def _polygon(n: int, r: float, rot: float, cx: float, cy: float, inner: float | None = None) -> list:
    """A regular polygon (or a star when ``inner`` is the inner radius ratio)."""
    pts = []
    k = 2 * n if inner else n
    for j in range(k):
        rr = r * (inner if inner and j % 2 else 1.0)
        a = rot + 2 * math.pi * j / k
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotated(points: list, rot: float, cx: float, cy: float) -> list:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _draw_shape(d, kind: str, cx: float, cy: float, r: float, rot: float, fill, bg) -> None:
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=bg)
    elif kind == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ox, oy = cx + r * 0.45 * math.cos(rot), cy + r * 0.45 * math.sin(rot)
        d.ellipse([ox - r * 0.8, oy - r * 0.8, ox + r * 0.8, oy + r * 0.8], fill=bg)
    elif kind in ("triangle", "square", "pentagon", "hexagon"):
        n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind]
        d.polygon(_polygon(n, r, rot, cx, cy), fill=fill)
    elif kind == "star":
        d.polygon(_polygon(5, r, rot, cx, cy, inner=0.45), fill=fill)
    elif kind == "cross":
        w = r * 0.32
        arm = [(-r, -w), (r, -w), (r, w), (-r, w)]
        d.polygon(_rotated(arm, rot, cx, cy), fill=fill)
        d.polygon(_rotated(arm, rot + math.pi / 2, cx, cy), fill=fill)
    elif kind == "arrow":
        w = r * 0.25
        pts = [(-r, -w), (r * 0.2, -w), (r * 0.2, -r * 0.6), (r, 0), (r * 0.2, r * 0.6), (r * 0.2, w), (-r, w)]
        d.polygon(_rotated(pts, rot, cx, cy), fill=fill)
    else:
        raise ValueError(kind)


def shape_image(kind: str, index: int, seed: int = SHAPES_SEED, size: int = SHAPES_SIZE):
    """One image of ``kind``: a PIL RGB image, a pure function of (seed, kind, index)."""

    rng = np.random.default_rng([seed, SHAPES.index(kind), index])
    big = size * 2  # drawn at 2x, then reduced: anti-aliased edges
    # background: a colour gradient plus a texture of stripes or blotches
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    bg = c0 * (1 - ramp) + c1 * ramp
    if rng.random() < 0.5:
        freq = rng.uniform(4, 14)
        bg += 30 * np.sin(2 * math.pi * freq * (np.cos(angle + 1) * xx + np.sin(angle + 1) * yy))[..., None]
    else:
        bg += rng.normal(0, 1, (big // 8, big // 8, 1)).repeat(8, 0).repeat(8, 1) * 25
    img = Image.fromarray(np.clip(bg, 0, 255).astype("uint8"), "RGB")
    d = ImageDraw.Draw(img)
    # clutter: a few lines and dots in random colours
    for _ in range(int(rng.integers(1, 5))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, big, 4))
            d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, 4)))
        else:
            x, y, rr = float(rng.uniform(0, big)), float(rng.uniform(0, big)), float(rng.uniform(2, 6))
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=col)
    # the shape, in a colour that stands out from the background around it
    r = float(rng.uniform(0.18, 0.40)) * big
    cx, cy = (float(v) for v in rng.uniform(r + 2, big - r - 2, 2))
    local = np.asarray(img)[int(cy), int(cx)].astype(float)
    fill = rng.integers(0, 256, 3).astype(float)
    if np.abs(fill - local).sum() < 200:
        fill = 255 - local
    mask = Image.new("L", (big, big), 0)  # holes (ring, crescent) show the background through
    _draw_shape(ImageDraw.Draw(mask), kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)), 255, 0)
    img.paste(tuple(int(v) for v in fill), (0, 0), mask)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2)))).resize((size, size), Image.BILINEAR)
    arr = np.asarray(img).astype(float) + rng.normal(0, rng.uniform(4, 16), (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype("uint8"), "RGB")


def write_shapes(dest: str | os.PathLike, per_class: int = SHAPES_PER_CLASS) -> Path:
    dest = Path(dest)
    stamp = _SHAPES_VERSION if per_class == SHAPES_PER_CLASS else f"{_SHAPES_VERSION} per_class={per_class}"
    if _complete(dest, stamp):
        return dest
    progress = Progress("builtin:shapes: generating", len(SHAPES) * per_class, "images")
    for kind in SHAPES:
        for i in range(per_class):
            atomic_write_bytes(dest / kind / f"{kind}_{i:04d}.png", png_bytes(shape_image(kind, i)))
            progress.update()
    progress.close()
    atomic_write_text(dest / ".complete", stamp + "\n")
    return dest
