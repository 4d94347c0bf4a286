"""Built-in demo inputs: a real photo that a registry package ships, and a generated painting.

The content photo is Grace Hopper's portrait from matplotlib's sample data (the ``demo`` extra).
The style is painted here: short brush strokes that follow a field of swirls, in a night-sky
palette, so the demo needs no image from outside the installed packages.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from nst_batch.errors import NstError
from nst_batch.images import open_rgb

PALETTE = (  # RGB: deep blues, cobalt, teal, ochre, lemon, cream
    (18, 32, 84),
    (30, 58, 138),
    (52, 96, 170),
    (70, 140, 160),
    (200, 150, 40),
    (240, 205, 70),
    (245, 235, 190),
)


def content_photo() -> Image.Image:
    """Grace Hopper's portrait, from matplotlib's bundled sample data."""
    try:
        from matplotlib import cbook
    except ImportError:
        raise NstError(
            "the demo's content photo comes with matplotlib: pip install 'nst-batch[demo]'"
        ) from None
    return open_rgb(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def swirl_painting(size: int = 512, seed: int = 0, strokes: int = 3000) -> Image.Image:
    """A square painting of swirling brush strokes; the same ``seed`` draws the same picture."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), PALETTE[0])
    draw = ImageDraw.Draw(img)
    # A few vortices; the stroke direction at a point is the sum of their tangential fields.
    centres = rng.uniform(0.1, 0.9, size=(5, 2)) * size
    spins = rng.choice([-1.0, 1.0], size=5) * rng.uniform(0.5, 1.5, size=5)

    def direction(x: float, y: float) -> float:
        vx = vy = 0.0
        for (cx, cy), s in zip(centres, spins, strict=True):
            dx, dy = x - cx, y - cy
            r2 = dx * dx + dy * dy + (0.05 * size) ** 2
            vx += -s * dy / r2
            vy += s * dx / r2
        return math.atan2(vy, vx + 0.2 / size)  # a slight drift keeps strokes moving

    step = size / 160
    for _ in range(strokes):
        x, y = rng.uniform(0, size, size=2)
        base = np.array(PALETTE[rng.integers(len(PALETTE))], dtype=float)
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 12, 3), 0, 255))
        points = [(x, y)]
        for _ in range(int(rng.integers(6, 16))):
            angle = direction(x, y)
            x, y = x + step * math.cos(angle), y + step * math.sin(angle)
            points.append((x, y))
        draw.line(points, fill=colour, width=int(rng.integers(2, 6)), joint="curve")
    return img.filter(ImageFilter.SMOOTH)
