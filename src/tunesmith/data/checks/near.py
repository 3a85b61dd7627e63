"""Near duplicates inside a file, and overlap with the sealed test set (MinHash LSH + exact Jaccard)."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.checks.dedup import input_key
from tunesmith.data.formats import Example, parse_record
from tunesmith.data.minhash import (
    MinHasher,
    UnionFind,
    batch_shingles,
    candidate_pairs,
    drop_ids,
    drop_shingles,
    frequent_shingles,
    jaccard_ids,
    shingle_ids,
)
from tunesmith.data.reader import iter_raw, read_line_at

BATCH = 4096
MAIN, REFERENCE = 0, 1
#: LSH candidates whose MinHash estimate of Jaccard is more than this below the threshold are dropped
#: before the exact check. With 64 permutations that is about 6 standard deviations for a pair right at
#: a 0.8 threshold (P(dropped) ~ 2e-8, against ~2e-4 that the banding misses it in the first place),
#: while random pairs that merely share boilerplate (Jaccard ~0.1) never get near it. Without this,
#: candidates grow faster than the file (4 per example at 1M lines) and each costs a re-read and an
#: exact Jaccard. None turns it off (every candidate is checked exactly).
PREFILTER_MARGIN = 0.3
_PREFILTER_CHUNK = 1 << 18


class NearIndex:
    """Streams documents into LSH band keys; verifies candidate pairs with exact Jaccard at the end.

    Per document it keeps the band keys (16 x 8 bytes), one byte of each MinHash slot (64 bytes, a
    b-bit MinHash sketch for the prefilter: it can only over-estimate similarity), and the line, byte
    offset and origin needed to re-read the text of a candidate.

    Boilerplate shingles (in over half of a batch's documents) are left out of the signatures and of
    the exact Jaccard, so a shared template does not make its rows near-duplicates. The set only
    grows: a template that first dominates a later batch (files concatenated from several sources) is
    dropped from then on, and from every exact check.
    """

    def __init__(self, threshold: float = 0.8, hasher: MinHasher | None = None,
                 prefilter_margin: float | None = PREFILTER_MARGIN) -> None:
        self.threshold = threshold
        self.hasher = hasher or MinHasher()
        self.prefilter_margin = prefilter_margin
        self._texts: list[str] = []
        self._keys: list[np.ndarray] = []
        self._sketch: list[np.ndarray] = []
        self.lines: list[int] = []
        self.offsets = array("q")
        self.origin = bytearray()
        #: sorted packed ids (`shingle_ids`) of the boilerplate shingles found so far
        self.boilerplate = np.zeros(0, dtype=np.uint64)

    def add(self, text: str, line: int, offset: int, origin: int = MAIN) -> None:
        self._texts.append(text)
        self.lines.append(line)
        self.offsets.append(offset)
        self.origin.append(origin)
        if len(self._texts) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._texts:
            batch = batch_shingles(self._texts)
            found = frequent_shingles(batch)
            if found.size:
                self.boilerplate = np.union1d(self.boilerplate, found)
            sig = self.hasher.signatures_of(drop_shingles(batch, self.boilerplate))
            self._keys.append(self.hasher.band_keys(sig))
            self._sketch.append(sig.astype(np.uint8))  # low byte of every slot
            self._texts = []

    def _prefilter(self, pairs: np.ndarray) -> np.ndarray:
        """Keep the pairs whose sketches agree on at least (threshold - margin) of the slots."""
        sketch = np.concatenate(self._sketch)
        self._sketch = [sketch]
        need = (self.threshold - self.prefilter_margin) * sketch.shape[1] - 1e-9
        keep = np.empty(len(pairs), dtype=bool)
        for start in range(0, len(pairs), _PREFILTER_CHUNK):
            chunk = pairs[start : start + _PREFILTER_CHUNK]
            agree = np.count_nonzero(sketch[chunk[:, 0]] == sketch[chunk[:, 1]], axis=1)
            keep[start : start + len(chunk)] = agree >= need
        return pairs[keep]

    def verified_pairs(self, files: dict[int, Path] | None = None, *,
                       text_of: Callable[[int], str] | None = None) -> list[tuple[int, int, float]]:
        """(doc_i, doc_j, jaccard) for candidates at or above the threshold, in (i, j) order.

        The text of a candidate is re-read from `files` (by origin, at the document's byte offset),
        or asked of `text_of(doc)` for documents that were never in a file (teacher inputs)."""
        if text_of is None:
            if files is None:
                raise TypeError("verified_pairs needs files or text_of")
            text_of = partial(_text_in_file, files, self)
        self._flush()
        if not self._keys:
            return []
        keys = np.concatenate(self._keys)
        self._keys = [keys]
        pairs = candidate_pairs(keys)
        origin = np.frombuffer(bytes(self.origin), dtype=np.uint8)
        pairs = pairs[(origin[pairs[:, 0]] != REFERENCE) | (origin[pairs[:, 1]] != REFERENCE)]
        if self.prefilter_margin is not None and len(pairs):
            pairs = self._prefilter(pairs)
        # Shingles of a document are re-read from its file; only documents in several pairs are cached,
        # and each is dropped after its last pair.
        docs, uses = np.unique(pairs, return_counts=True)
        remaining = dict(zip(docs[uses > 1].tolist(), uses[uses > 1].tolist()))
        cache: dict[int, np.ndarray] = {}

        def shingles(doc: int) -> np.ndarray:
            ids = cache.get(doc)
            if ids is None:
                ids = drop_ids(shingle_ids(text_of(doc)), self.boilerplate)
                if doc in remaining:
                    cache[doc] = ids
            if doc in remaining:
                remaining[doc] -= 1
                if not remaining[doc]:
                    del remaining[doc], cache[doc]
            return ids

        out = []
        for i, j in pairs.tolist():
            sim = jaccard_ids(shingles(i), shingles(j))
            if sim >= self.threshold:
                out.append((i, j, sim))
        return out


def _text_in_file(files: dict[int, Path], index: NearIndex, doc: int) -> str:
    ex = parse_record(read_line_at(files[index.origin[doc]], index.offsets[doc]), index.lines[doc])
    return ex.dialogue_text()


class NearDuplicates:
    """near_duplicate within the file and test_overlap against the sealed test set, in one index."""

    def __init__(self, ctx: CheckContext) -> None:
        self.index = NearIndex(ctx.near_threshold)
        self._test_inputs: dict[int, int] = {}
        self._exact_overlap: dict[int, list[int]] = {}
        if ctx.test_file is not None and ctx.test_file.resolve() != ctx.file.resolve():
            for raw in iter_raw(ctx.test_file):
                if raw.error is None:
                    ex = parse_record(raw.value, raw.line, raw.offset)
                    if not ex.problems:
                        self._test_inputs.setdefault(input_key(ex), raw.line)
                        self.index.add(ex.dialogue_text(), raw.line, raw.offset, REFERENCE)

    def observe_overlap(self, ex: Example) -> None:
        """Record an exact input match with a sealed test row (without indexing for near-duplicates)."""
        if self._test_inputs:
            test_line = self._test_inputs.get(input_key(ex))
            if test_line is not None:
                self._exact_overlap.setdefault(test_line, []).append(ex.line)

    def observe(self, ex: Example) -> None:
        self.observe_overlap(ex)
        self.index.add(ex.dialogue_text(), ex.line, ex.offset, MAIN)

    def finish(self, ctx: CheckContext) -> list[Finding]:
        files = {MAIN: ctx.file}
        if ctx.test_file is not None:
            files[REFERENCE] = ctx.test_file
        idx = self.index
        uf = UnionFind()
        overlap: dict[int, set[int]] = {t: set(lines) for t, lines in self._exact_overlap.items()}
        for i, j, _sim in idx.verified_pairs(files):
            oi, oj = idx.origin[i], idx.origin[j]
            if oi == MAIN and oj == MAIN:
                uf.union(i, j)
            else:
                test_doc, train_doc = (i, j) if oi == REFERENCE else (j, i)
                overlap.setdefault(idx.lines[test_doc], set()).add(idx.lines[train_doc])
        out = []
        clusters = uf.groups()
        for group in clusters:
            lines = [idx.lines[d] for d in group]
            out.append(finding(
                "near_duplicate", lines,
                f"{len(lines)} near-identical examples (Jaccard >= {idx.threshold:.2f} on character 5-grams, "
                "not counting text that most rows share)",
            ))
        for test_line, train_lines in sorted(overlap.items()):
            out.append(finding(
                "test_overlap", sorted(train_lines),
                f"{len(train_lines)} example(s) equal or nearly equal sealed test row {test_line} of {ctx.test_file.name}",
            ))
        ctx.stats["near_duplicate_clusters"] = len(clusters)
        ctx.stats["near_duplicate_examples"] = sum(len(g) for g in clusters)
        return out
