"""MinHash signatures, LSH banding and union-find (tunesmith.data.minhash)."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest

from tunesmith.data.minhash import (
    NGRAM,
    MinHasher,
    UnionFind,
    batch_shingles,
    candidate_pairs,
    drop_ids,
    drop_shingles,
    frequent_shingles,
    jaccard,
    shingle_ids,
    shingle_set,
    shingle_text,
)


def random_text(rng: random.Random, lo: int = 10, hi: int = 30) -> str:
    return " ".join(
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
        for _ in range(rng.randint(lo, hi))
    )


def estimated_jaccard(sig: np.ndarray, i: int, j: int) -> float:
    return float(np.mean(sig[i] == sig[j]))


def pair_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in pairs.tolist()}


# --- shingles and exact Jaccard ------------------------------------------------------------------


def test_shingle_text_normalises_case_and_whitespace():
    assert shingle_text("  Hello \n\t World  ") == b"hello world"
    assert shingle_text("ab") == b"ab   "  # padded to one n-gram
    assert shingle_text("") == b" " * NGRAM
    assert shingle_text("É") == "é".encode().ljust(NGRAM, b" ")


def test_shingle_set():
    assert shingle_set("abcdef") == {b"abcde", b"bcdef"}
    assert shingle_set("abc") == {b"abc  "}
    assert shingle_set("ABCDEF  ") == shingle_set("abcdef")
    assert len(shingle_set("the quick brown fox")) == len("the quick brown fox") - NGRAM + 1


def test_jaccard_basics():
    a, b = shingle_set("the quick brown fox"), shingle_set("a totally different sentence")
    assert jaccard(a, a) == 1.0
    assert jaccard(set(), set()) == 1.0
    assert jaccard(a, set()) == 0.0
    assert jaccard(a, b) == jaccard(b, a)
    assert 0.0 <= jaccard(a, b) < 0.1
    x, y = {b"aaaaa", b"bbbbb"}, {b"bbbbb", b"ccccc"}
    assert jaccard(x, y) == pytest.approx(1 / 3)


# --- signatures ----------------------------------------------------------------------------------


def test_one_word_changed_is_a_candidate_with_high_similarity():
    rng = random.Random(3)
    words = random_text(rng, 40, 40).split()
    a = " ".join(words)
    words[17] = "changed"
    b = " ".join(words)
    exact = jaccard(shingle_set(a), shingle_set(b))
    assert exact > 0.8
    mh = MinHasher()
    sig = mh.signatures([a, b, random_text(rng)])
    est = estimated_jaccard(sig, 0, 1)
    assert est > 0.7
    assert abs(est - exact) < 0.15
    assert estimated_jaccard(sig, 0, 2) < 0.2
    pairs = pair_set(candidate_pairs(mh.band_keys(sig)))
    assert (0, 1) in pairs
    assert (0, 2) not in pairs and (1, 2) not in pairs


def test_unrelated_texts_give_few_candidates():
    rng = random.Random(0)
    texts = [random_text(rng) for _ in range(2000)]
    mh = MinHasher()
    sig = mh.signatures(texts)
    assert sig.shape == (2000, mh.num_perm)
    pairs = candidate_pairs(mh.band_keys(sig))
    assert len(pairs) <= 10  # out of ~2 million possible pairs
    # any candidates that do come up are far from the threshold on exact Jaccard
    for i, j in pairs.tolist():
        assert jaccard(shingle_set(texts[i]), shingle_set(texts[j])) < 0.5


def test_a_planted_pair_among_many_unrelated_texts_is_found():
    rng = random.Random(11)
    texts = [random_text(rng, 20, 40) for _ in range(2000)]
    words = texts[123].split()
    words[-1] = "different"
    texts[1789] = " ".join(words)
    mh = MinHasher()
    pairs = pair_set(candidate_pairs(mh.band_keys(mh.signatures(texts))))
    assert (123, 1789) in pairs
    assert len(pairs) <= 10


def test_signatures_are_deterministic_and_batch_independent():
    rng = random.Random(5)
    texts = [random_text(rng, 1, 40) for _ in range(60)] + ["", "a", "abcd", "abcde", "é" * 3]
    mh = MinHasher()
    batch = mh.signatures(texts)
    assert batch.dtype == np.uint32
    one_by_one = np.stack([mh.signatures([t])[0] for t in texts])
    np.testing.assert_array_equal(batch, one_by_one)
    np.testing.assert_array_equal(batch, MinHasher().signatures(texts))  # same seed, same permutations
    assert not np.array_equal(batch, MinHasher(seed=2).signatures(texts))
    # only the normalised text matters
    np.testing.assert_array_equal(mh.signatures(["Hello   World"]), mh.signatures(["hello world"]))


def test_signature_is_the_minimum_over_shingles():
    """A superset of shingles can only lower (or keep) every signature slot."""
    mh = MinHasher()
    sig = mh.signatures(["abcdefghij", "abcdefghij klmnopqrst"])
    assert (sig[1] <= sig[0]).all()


def test_minhasher_shapes_and_validation():
    with pytest.raises(ValueError, match="multiple of rows"):
        MinHasher(num_perm=10, rows=4)
    mh = MinHasher(num_perm=32, rows=8)
    assert (mh.num_perm, mh.rows, mh.bands) == (32, 8, 4)
    empty = mh.signatures([])
    assert empty.shape == (0, 32)
    sig = mh.signatures(["one text here", "two texts here"])
    keys = mh.band_keys(sig)
    assert keys.shape == (2, 4) and keys.dtype == np.uint64
    assert candidate_pairs(mh.band_keys(empty)).shape == (0, 2)


def test_identical_texts_share_every_band():
    mh = MinHasher()
    keys = mh.band_keys(mh.signatures(["same text, same keys"] * 2 + ["other words entirely"]))
    assert (keys[0] == keys[1]).all()
    assert not (keys[0] == keys[2]).any()


# --- boilerplate ---------------------------------------------------------------------------------

TEMPLATE = "Classify the ticket below into billing, technical or account. Ticket: "


def test_batch_shingles_match_shingle_ids():
    rng = random.Random(8)
    texts = [random_text(rng, 1, 20) for _ in range(30)] + ["", "ab", "é"]
    batch = batch_shingles(texts)
    assert batch.counts.tolist() == [max(1, len(shingle_text(t)) - NGRAM + 1) for t in texts]
    ends = np.cumsum(batch.counts)
    for t, end, count in zip(texts, ends.tolist(), batch.counts.tolist()):
        np.testing.assert_array_equal(np.unique(batch.ids[end - count : end]), shingle_ids(t))


def test_frequent_shingles_are_the_template():
    rng = random.Random(4)
    texts = [TEMPLATE + random_text(rng, 3, 6) for _ in range(40)] + [random_text(rng) for _ in range(20)]
    found = frequent_shingles(batch_shingles(texts))
    template = shingle_ids(TEMPLATE.strip())
    assert set(template.tolist()) <= set(found.tolist())  # in 40 of 60 documents: over half
    assert len(found) < len(template) + 10  # little else (the odd common letter run of the tickets)
    # in 20 of 40 documents is not over half; in fewer than 10 documents nothing is boilerplate
    assert not set(template.tolist()) & set(frequent_shingles(batch_shingles(texts[20:])).tolist())
    assert frequent_shingles(batch_shingles(texts[:9])).size == 0
    # counted in a sample of the documents, the same template is found
    assert set(template.tolist()) <= set(frequent_shingles(batch_shingles(texts), sample=20).tolist())


def test_drop_shingles_and_the_all_boilerplate_fallback():
    texts = [TEMPLATE + "refund my money please", TEMPLATE, "unrelated words here"]
    batch = batch_shingles(texts)
    drop = shingle_ids(TEMPLATE)
    kept = drop_shingles(batch, drop)
    assert kept.counts[0] < batch.counts[0]
    assert not set(kept.ids[: kept.counts[0]].tolist()) & set(drop.tolist())
    # the bare template is nothing but boilerplate: it keeps all of its shingles, and so does an unrelated text
    assert kept.counts.tolist()[1:] == batch.counts.tolist()[1:]
    assert drop_shingles(batch, np.zeros(0, dtype=np.uint64)) is batch
    # one document at a time (the exact check) follows the same rule
    assert set(drop_ids(shingle_ids(texts[0]), drop).tolist()) == set(kept.ids[: kept.counts[0]].tolist())
    np.testing.assert_array_equal(drop_ids(shingle_ids(TEMPLATE), drop), shingle_ids(TEMPLATE))
    # signatures of the filtered batch are those of the filtered shingles
    mh = MinHasher()
    sig = mh.signatures_of(kept)
    assert sig.shape == (3, mh.num_perm)
    np.testing.assert_array_equal(sig[2], mh.signatures(texts[2:])[0])


# --- candidate pairs -----------------------------------------------------------------------------


def test_candidate_pairs_connect_a_whole_bucket():
    mh = MinHasher()
    texts = ["quick brown fox jumps"] + ["the very same text"] * 5 + ["lazy dogs sleep all day"]
    pairs = candidate_pairs(mh.band_keys(mh.signatures(texts)))
    assert pairs.shape[1] == 2
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(pair_set(pairs)) == len(pairs)  # unique
    assert pair_set(pairs) <= {(i, j) for i in range(1, 6) for j in range(i + 1, 6)}
    uf = UnionFind()
    for i, j in pairs.tolist():
        uf.union(i, j)
    assert uf.groups() == [[1, 2, 3, 4, 5]]


def test_candidate_pairs_from_hand_made_keys():
    keys = np.array([[1, 10], [2, 20], [1, 30], [3, 20], [4, 40]], dtype=np.uint64)
    assert pair_set(candidate_pairs(keys)) == {(0, 2), (1, 3)}
    assert candidate_pairs(np.arange(8, dtype=np.uint64).reshape(4, 2)).shape == (0, 2)


# --- union-find ----------------------------------------------------------------------------------


def test_union_find_groups():
    uf = UnionFind()
    uf.union(1, 2)
    uf.union(3, 2)
    uf.union(10, 11)
    uf.union(11, 12)
    uf.union(2, 2)
    uf.union(7, 7)
    assert sorted(uf.groups()) == [[1, 2, 3], [10, 11, 12]]
    assert uf.find(3) == uf.find(1) == uf.find(2)
    assert uf.find(12) == uf.find(10) != uf.find(1)
    assert uf.find(99) == 99  # an unseen element is its own root
    uf.union(12, 3)
    assert sorted(uf.groups()) == [[1, 2, 3, 10, 11, 12]]


def test_union_find_long_chain_is_one_group():
    uf = UnionFind()
    for i in range(500, 0, -1):
        uf.union(i, i - 1)
    groups = uf.groups()
    assert groups == [list(range(501))]
    root = uf.find(250)
    assert all(uf.find(i) == root for i in range(501))


def test_union_find_empty():
    assert UnionFind().groups() == []
