"""MinHash signatures and LSH banding over character 5-grams, vectorised with numpy.

Signatures are computed for a batch of documents at once (one pass per permutation over all
shingles of the batch), and candidate pairs come from sorting each band's keys, so nothing is ever
compared all-pairs. Candidates are re-checked with exact Jaccard by the caller, so the threshold
means what it says.

Boilerplate (a shingle in more than half of the documents: a shared instruction template, the keys of
a JSON answer) is dropped before hashing and before the exact check: otherwise 120 rows of one
200-character template plus a short distinct ticket all look alike. `frequent_shingles` finds it in a
sample of a batch; `drop_shingles` removes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

NGRAM = 5
_WS = re.compile(r"\s+")
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ID_BITS = 8 * NGRAM  # a packed shingle id is 40 bits
_FIB = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: multiplicative hashing
#: A shingle in more than this share of a batch's documents is boilerplate ...
BOILERPLATE_SHARE = 0.5
#: ... and in at least this many of them: in a handful of rows, shared text is a near duplicate, not a template.
BOILERPLATE_MIN_DOCS = 10
#: Documents of a batch counted for document frequency (evenly spaced): enough that the sampled share
#: is within 0.07 of the batch's (3 standard deviations), few enough to cost ~2 % of hashing the batch.
BOILERPLATE_SAMPLE = 512
#: A document compares on its full text when leaving out the shared text would leave it fewer than
#: this many shingles (a variable part of under ~8 characters: a counter, an id, one short word). It
#: is then not a template with content of its own but a near-copy of most of the file (60 rows of one
#: prompt numbered "(v1)", "(v2)", ...). Two short words of a ticket behind a 200-character template
#: (16+ shingles) are content: those rows compare on the ticket alone.
OWN_TEXT_MIN = 12


def shingle_text(text: str) -> bytes:
    """Lower-cased, whitespace-collapsed UTF-8 bytes, padded to at least one n-gram."""
    b = _WS.sub(" ", text.lower()).strip().encode("utf-8")
    return b if len(b) >= NGRAM else b.ljust(NGRAM, b" ")


def shingle_set(text: str) -> set[bytes]:
    b = shingle_text(text)
    return {b[i : i + NGRAM] for i in range(len(b) - NGRAM + 1)}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def shingle_ids(text: str) -> np.ndarray:
    """`shingle_set` as a sorted array of unique uint64: each 5-byte window packed exactly into 40 bits.

    The packing is one-to-one, so sizes and intersections (hence `jaccard_ids`) equal those of the
    byte-string sets, at about a tenth of the memory and time.
    """
    buf = np.frombuffer(shingle_text(text), dtype=np.uint8).astype(np.uint64)
    count = buf.shape[0] - NGRAM + 1
    packed = buf[:count].copy()
    for k in range(1, NGRAM):
        packed = (packed << np.uint64(8)) | buf[k : count + k]
    return _sorted_unique(packed)


def jaccard_ids(a: np.ndarray, b: np.ndarray) -> float:
    """`jaccard` over two `shingle_ids` arrays (same value, bit for bit)."""
    if not a.size and not b.size:
        return 1.0
    inter = int(np.intersect1d(a, b, assume_unique=True).size)
    return inter / (int(a.size) + int(b.size) - inter)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the packed 5 bytes over all 64 bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


@dataclass(slots=True)
class Shingles:
    """The shingles of a batch of documents: packed ids (as `shingle_ids`, not de-duplicated) of all
    documents one after the other, and how many belong to each (always at least one)."""

    ids: np.ndarray
    counts: np.ndarray


def batch_shingles(texts: Iterable[str]) -> Shingles:
    encoded = [shingle_text(t) for t in texts]
    n = len(encoded)
    if n == 0:
        return Shingles(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    total = buf.shape[0]
    # Pack each 5-byte window exactly into 40 bits: no shingle collisions before hashing.
    packed = buf[: total - NGRAM + 1].copy()
    for k in range(1, NGRAM):
        packed = (packed << np.uint64(8)) | buf[k : total - NGRAM + 1 + k]
    counts = lengths - (NGRAM - 1)
    starts = np.cumsum(lengths) - lengths
    seg = np.cumsum(counts) - counts
    # windows that cross from one document into the next are skipped
    pos = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(seg, counts) + np.repeat(starts, counts)
    return Shingles(packed[pos], counts)


def frequent_shingles(batch: Shingles, share: float = BOILERPLATE_SHARE, min_docs: int = BOILERPLATE_MIN_DOCS,
                      sample: int = BOILERPLATE_SAMPLE) -> np.ndarray:
    """Sorted ids of the shingles in more than `share` (and at least `min_docs`) of the documents,
    counted in up to `sample` evenly spaced documents of the batch."""
    n = batch.counts.shape[0]
    if n < min_docs:
        return np.zeros(0, dtype=np.uint64)
    picked = np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64))
    ends = np.cumsum(batch.counts)
    starts = ends - batch.counts
    ids = np.concatenate([batch.ids[starts[d] : ends[d]] for d in picked.tolist()])
    owner = np.repeat(np.arange(picked.shape[0], dtype=np.uint64), batch.counts[picked])
    # one key per (document, shingle): a shingle repeated inside a document counts once
    per_doc = _sorted_unique((owner << np.uint64(_ID_BITS)) | ids) & np.uint64((1 << _ID_BITS) - 1)
    values = np.sort(per_doc)
    if values.size == 0:
        return values
    starts_of_runs = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    docs = np.diff(np.append(starts_of_runs, values.size))
    need = max(min_docs, int(share * picked.shape[0]) + 1)
    return values[starts_of_runs[docs >= need]]


def drop_shingles(batch: Shingles, drop: np.ndarray) -> Shingles:
    """The batch without the shingles in `drop` (sorted ids). A document with too little text of its
    own left (`OWN_TEXT_MIN`) keeps all of its shingles: it is compared on its full text."""
    if drop.size == 0 or batch.ids.size == 0:
        return batch
    hit = _member(batch.ids, drop)
    seg = np.cumsum(batch.counts) - batch.counts
    removed = np.add.reduceat(hit.astype(np.int64), seg)
    whole = ~_keeps_own_text(batch.counts - removed)
    if whole.any():
        hit &= ~np.repeat(whole, batch.counts)
        removed[whole] = 0
    return Shingles(batch.ids[~hit], batch.counts - removed)


def _keeps_own_text(own: np.ndarray | int) -> np.ndarray | bool:
    """Whether a document keeps enough text of its own to be compared without the shared text."""
    return own >= OWN_TEXT_MIN


def _member(ids: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """ids in the sorted array drop, as a mask. A bit table on a multiplicative hash settles most ids
    (3x faster than a binary search of every id); only its hits are looked up exactly."""
    bits = min(24, max(16, int(drop.size).bit_length() + 6))
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[(drop * _FIB) >> shift] = True
    maybe = np.flatnonzero(table[(ids * _FIB) >> shift])
    hit = np.zeros(ids.shape[0], dtype=bool)
    sub = ids[maybe]
    hit[maybe] = drop[np.minimum(np.searchsorted(drop, sub), drop.size - 1)] == sub
    return hit


def drop_ids(ids: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """`shingle_ids` of one document without the shingles in `drop`, or all of them when too few would remain."""
    if drop.size == 0:
        return ids
    kept = np.setdiff1d(ids, drop, assume_unique=True)
    return kept if _keeps_own_text(kept.size) else ids


class MinHasher:
    """`num_perm` permutations grouped into bands of `rows`; band keys are what LSH sorts."""

    def __init__(self, num_perm: int = 64, rows: int = 4, seed: int = 1) -> None:
        if num_perm % rows:
            raise ValueError("num_perm must be a multiple of rows")
        rng = np.random.default_rng(seed)
        self.num_perm, self.rows, self.bands = num_perm, rows, num_perm // rows
        self._a = rng.integers(1, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)
        self._b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """(n_docs, num_perm) uint32 MinHash signatures."""
        return self.signatures_of(batch_shingles(texts))

    def signatures_of(self, batch: Shingles) -> np.ndarray:
        """Signatures of a batch of shingles (after `drop_shingles`, if any)."""
        n = batch.counts.shape[0]
        if n == 0:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        seg = np.cumsum(batch.counts) - batch.counts
        # 32-bit universal hashing (a*x + b mod 2^32, a odd) on the mixed shingle: half the memory
        # traffic of 64-bit arithmetic, and the mixing already spread the bits.
        h = (_mix(batch.ids) >> np.uint64(32)).astype(np.uint32)
        sig = np.empty((n, self.num_perm), dtype=np.uint32)
        for k in range(self.num_perm):
            v = h * self._a[k] + self._b[k]
            sig[:, k] = np.minimum.reduceat(v, seg)
        return sig

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(n_docs, bands) uint64 keys; two documents share a key when a whole band agrees."""
        n = sig.shape[0]
        grouped = sig.reshape(n, self.bands, self.rows).astype(np.uint64)
        key = np.zeros((n, self.bands), dtype=np.uint64)
        for r in range(self.rows):
            key = _mix(key ^ (grouped[:, :, r] + np.uint64(r + 1)))
        return key


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique for a 1-d integer array, by sorting. (NumPy 2's np.unique goes through a hash table,
    which is ~100x slower than a sort for millions of int64.)"""
    a = np.sort(a)
    if a.size < 2:
        return a
    keep = np.empty(a.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable") (equal keys keep index order), from two fast unstable sorts."""
    n = keys.shape[0]
    order = np.argsort(keys)
    if n < 2:
        return order
    sk = keys[order]
    run_start = np.empty(n, dtype=bool)
    run_start[0] = True
    np.not_equal(sk[1:], sk[:-1], out=run_start[1:])
    if run_start.all():
        return order  # all keys distinct: the order is already the stable one
    run_id = np.cumsum(run_start) - 1
    # (run, index) codes are unique, so sorting them orders each run of equal keys by index
    return np.sort(run_id * n + order) % n


def candidate_pairs(band_keys: np.ndarray) -> np.ndarray:
    """Unique (i, j) pairs, i < j, that share at least one band key, sorted.

    Within a bucket each member is paired with the bucket's first member and its predecessor: enough
    to connect clusters without the quadratic blow-up of a huge bucket.
    """
    n, bands = band_keys.shape
    chunks = []  # one int64 code per pair: min(i, j) * n + max(i, j)
    for b in range(bands):
        keys = band_keys[:, b]
        order = _stable_argsort(keys)
        sk = keys[order]
        same = sk[1:] == sk[:-1]
        if not same.any():
            continue
        idx = np.nonzero(same)[0]  # order[idx] and order[idx + 1] share a key
        left, right = order[idx], order[idx + 1]
        chunks.append(np.minimum(left, right) * n + np.maximum(left, right))
        # star edges to the first member of each run
        run_start = np.concatenate(([True], ~same))
        first_of_run = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))
        heads = first_of_run[idx + 1]
        far = heads != idx
        if far.any():
            left, right = order[heads[far]], order[idx[far] + 1]
            chunks.append(np.minimum(left, right) * n + np.maximum(left, right))
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    codes = _sorted_unique(np.concatenate(chunks))
    return np.stack([codes // n, codes % n], axis=1)


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        for x in list(out):
            if x not in out[x]:
                out[x].append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]
