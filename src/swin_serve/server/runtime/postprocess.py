"""Model outputs -> response values: softmax top-k and feature pooling. Pure NumPy."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """(K,) logits -> (K,) probabilities, computed in float64 (stable for large logits)."""
    z = logits.astype(np.float64) - float(np.max(logits))
    e = np.exp(z)
    return e / e.sum()


def top_k(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` largest (index, probability) pairs, highest first; ties keep the lower index."""
    k = min(k, probs.shape[0])
    # A stable argsort on -p keeps ties in index order, so results are deterministic.
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), float(probs[i])) for i in order]


def pool_feature(value: np.ndarray, pool: str) -> np.ndarray:
    """One image's output: (C, H, W) maps are averaged to (C,) when ``pool == "avg"``; (C,) stays."""
    if pool == "avg" and value.ndim == 3:
        return value.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)  # C
    return value
