"""Looking at drawn PNGs: decode one, count the pixels near a colour (the plots' tests read them so)."""

from __future__ import annotations

import io

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


def pixels_near(image: np.ndarray, color: str, tolerance: int = 12) -> int:
    return int((np.abs(image[..., :3].astype(np.int16) - rgb(color)).max(axis=-1) <= tolerance).sum())


def load_png(data: bytes) -> np.ndarray:
    from PIL import Image

    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
