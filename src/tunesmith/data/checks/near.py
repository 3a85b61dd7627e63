"""Near duplicates inside a file, and overlap with the sealed test set (MinHash LSH + exact Jaccard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.checks.dedup import input_key
from tunesmith.data.formats import Example, parse_record
from tunesmith.data.minhash import MinHasher, UnionFind, candidate_pairs, jaccard, shingle_set
from tunesmith.data.reader import iter_raw, read_line_at

BATCH = 4096
MAIN, REFERENCE = 0, 1


class NearIndex:
    """Streams documents into LSH band keys; verifies candidate pairs with exact Jaccard at the end."""

    def __init__(self, threshold: float = 0.8, hasher: MinHasher | None = None) -> None:
        self.threshold = threshold
        self.hasher = hasher or MinHasher()
        self._texts: list[str] = []
        self._keys: list[np.ndarray] = []
        self.lines: list[int] = []
        self.offsets: list[int] = []
        self.origin: list[int] = []

    def add(self, text: str, line: int, offset: int, origin: int = MAIN) -> None:
        self._texts.append(text)
        self.lines.append(line)
        self.offsets.append(offset)
        self.origin.append(origin)
        if len(self._texts) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._texts:
            self._keys.append(self.hasher.band_keys(self.hasher.signatures(self._texts)))
            self._texts = []

    def verified_pairs(self, files: dict[int, Path]) -> list[tuple[int, int, float]]:
        """(doc_i, doc_j, jaccard) for candidates at or above the threshold."""
        self._flush()
        if not self._keys:
            return []
        pairs = candidate_pairs(np.concatenate(self._keys))
        cache: dict[int, set[bytes]] = {}

        def shingles(doc: int) -> set[bytes]:
            s = cache.get(doc)
            if s is None:
                ex = parse_record(read_line_at(files[self.origin[doc]], self.offsets[doc]), self.lines[doc])
                s = cache[doc] = shingle_set(ex.dialogue_text())
            return s

        out = []
        for i, j in pairs.tolist():
            if self.origin[i] == REFERENCE and self.origin[j] == REFERENCE:
                continue
            sim = jaccard(shingles(i), shingles(j))
            if sim >= self.threshold:
                out.append((i, j, sim))
        return out


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
                f"{len(lines)} near-identical examples (Jaccard >= {idx.threshold:.2f} on character 5-grams)",
            ))
        for test_line, train_lines in sorted(overlap.items()):
            out.append(finding(
                "test_overlap", sorted(train_lines),
                f"{len(train_lines)} example(s) equal or nearly equal sealed test row {test_line} of {ctx.test_file.name}",
            ))
        ctx.stats["near_duplicate_clusters"] = len(clusters)
        ctx.stats["near_duplicate_examples"] = sum(len(g) for g in clusters)
        return out
