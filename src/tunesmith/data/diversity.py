"""`tunesmith sample --diverse N`: the N most mutually different examples, for human review.

k-center greedy (farthest-point) over L2-normalised hashed word 1- and 2-gram vectors: every pick
is the example farthest from everything picked so far, so the sample covers the edge cases
instead of the common case.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import numpy as np

DIM = 1024
_TOKEN = re.compile(r"\w+|[^\w\s]")


def hashed_vectors(texts: list[str], dim: int = DIM) -> np.ndarray:
    mat = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        toks = _TOKEN.findall(text.lower())
        feats = toks + [a + " " + b for a, b in zip(toks, toks[1:])]
        for f in feats:
            h = zlib.crc32(f.encode("utf-8"))
            mat[row, h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return mat / norms


def default_sample_size(n: int) -> int:
    """The guide: review at least the most diverse ten percent, and no fewer than 50."""
    return min(n, max(50, -(-n // 10)))


def k_center(vectors: np.ndarray, k: int, progress: Callable[[int], None] | None = None) -> list[int]:
    """Indices of k points chosen farthest-first, starting from the point nearest the centroid."""
    n = vectors.shape[0]
    if k >= n:
        return list(range(n))
    centroid = vectors.mean(axis=0)
    first = int(np.argmin(((vectors - centroid) ** 2).sum(axis=1)))
    chosen = [first]
    dist = ((vectors - vectors[first]) ** 2).sum(axis=1)
    for i in range(1, k):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((vectors - vectors[nxt]) ** 2).sum(axis=1))
        if progress is not None:
            progress(i)
    return chosen
