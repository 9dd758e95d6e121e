"""Render an 8x8 scikit-learn digit onto a tall 32x48 RGB canvas.

Shared by ``train.py`` and the project's tests, so it imports only numpy and
Pillow. The canvas is deliberately taller than wide: a shorter-side resize
plus centre crop cuts rows off it, whereas a plain squash keeps the digit.
"""

import numpy as np
from PIL import Image

CANVAS_W = 32
CANVAS_H = 48
DIGIT_PX = 32  # 8x8 digit upsampled x4
MAX_OFFSET = CANVAS_H - DIGIT_PX  # 16 rows of vertical play


def render(digit8x8, offset):
    """Return the digit pasted at row ``offset`` (0..16) of a black canvas."""
    offset = int(offset)
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be in 0..{MAX_OFFSET}, got {offset}")
    values = np.asarray(digit8x8, dtype=np.float64).reshape(8, 8)
    # sklearn digits run 0..16; map them onto the full 8-bit grey range.
    grey = np.rint(values * 255.0 / 16.0).clip(0, 255).astype(np.uint8)
    big = Image.fromarray(grey).resize((DIGIT_PX, DIGIT_PX), Image.NEAREST)
    canvas = Image.new("L", (CANVAS_W, CANVAS_H), 0)
    canvas.paste(big, (0, offset))
    return canvas.convert("RGB")
