"""`baseline` answers the test set a chunk at a time and stops once the pass rate's interval decides.

The question is one bit: is the base model right at least `eval.baseline_threshold` (80 %) of the
time? A base that gets 0 of its first 16 answers right cannot reach 80 % on the rest, and the other
75 answers would cost minutes for nothing. The rule, and why each part is what it is:

* **Order.** The test set is answered in a seeded shuffle of its sealed order (`sample_order`,
  seed `ORDER_SEED`): every prefix is then a simple random sample of the test set, whatever order
  the split wrote it in. The seed is fixed, so a re-run answers the same prompts first (all of them
  from the generation cache), and the plain base and its prompted variant are measured on the same
  prompts (a paired sample).
* **Looks.** After every `CHUNK` (16) answers, never before `MIN_SAMPLE` (16), and not once the
  whole test set has answered (then the full-set rate decides, as with `--full`). When every answer
  is already in the generation cache (`eval` ran), the whole test set is free and counts.
* **Interval.** The Wilson score interval of the exact-match pass rate (`stats.wilson_interval`):
  exact match is pass/fail, and the report's bootstrap interval has zero width while every answer
  so far failed, which is exactly when stopping is most worth it.
* **Level.** Looking after every chunk and stopping at the first clear answer inflates the error
  rate, so `ALPHA` (5 %) is split evenly over the planned looks (Bonferroni): K looks use
  1 - 0.05 / K intervals each (5 looks on a 91-prompt test set: 99 % intervals). The chance that
  any look stops on the wrong side of the bar is then at most about 5 %.
* **What is estimated.** The pass rate of this test set, the number `--full` would give. Drawing
  without replacement from a finite set varies less than the binomial the Wilson interval assumes,
  so for that target the interval is conservative.
* **Decision.** The interval entirely below the bar: the base is not good enough (fine-tune);
  entirely at or above it: it passes. Otherwise the next chunk answers, up to the whole test set.

A rule change must change `RULE`: `tunesmith run` keys its baseline stage on it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tunesmith.evaluate.types import DecodeSettings, EvalItem
from tunesmith.progress import Say
from tunesmith.project import Project

CHUNK = 16
MIN_SAMPLE = 16
ALPHA = 0.05
ORDER_SEED = 0
#: the stopping rule in one string (part of `tunesmith run`'s baseline stage key)
RULE = f"wilson/bonferroni alpha={ALPHA} chunk={CHUNK} min={MIN_SAMPLE} seed={ORDER_SEED}"

Side = Literal["below", "above"]


def looks(total: int, *, chunk: int = CHUNK, minimum: int = MIN_SAMPLE) -> list[int]:
    """The sample sizes after which the rule may stop: every `chunk`, from `minimum`, below `total`."""
    first = max(chunk, -(-minimum // chunk) * chunk)
    return list(range(first, total, chunk))


def look_level(total: int, *, alpha: float = ALPHA, chunk: int = CHUNK, minimum: int = MIN_SAMPLE) -> float:
    """The interval level of each look: `alpha` split evenly over the planned looks (Bonferroni)."""
    return 1.0 - alpha / max(1, len(looks(total, chunk=chunk, minimum=minimum)))


@dataclass(frozen=True)
class Look:
    """One look: `passed` of `n` with its interval at `level`, and the side of the bar it lies on."""

    passed: int
    n: int
    lo: float
    hi: float
    level: float
    threshold: float
    side: Side | None

    @property
    def why(self) -> str:
        """'the 99 % interval [0.00, 0.29] is below the 0.80 bar' (or 'above', or 'straddles')."""
        where = {"below": "is below", "above": "is above", None: "straddles"}[self.side]
        return f"the {percent(self.level)} interval [{self.lo:.2f}, {self.hi:.2f}] {where} the {self.threshold:.2f} bar"


def percent(level: float) -> str:
    """0.99 -> '99 %', 0.98333 -> '98.3 %'."""
    return f"{level * 100:.3g} %"


def decide(passed: int, n: int, threshold: float, level: float) -> Look:
    """The look at `passed` of `n`: below when the whole interval is under `threshold`, above when it
    is at or over it (the guide's rule is `rate >= threshold`), None when it straddles the bar."""
    from tunesmith.evaluate.stats import wilson_interval

    lo, hi = wilson_interval(passed, n, level=level)
    side: Side | None = "below" if hi < threshold else "above" if lo >= threshold else None
    return Look(passed, n, lo, hi, level, threshold, side)


def sample_order(n: int, seed: int = ORDER_SEED) -> list[int]:
    """Indices 0..n-1 in a seeded shuffle: the order the test set is answered in."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True)
class Sample:
    """What was evaluated: `evaluated` of `of` items; `stopped` says why it ended early (None: all
    of them were answered); `look` is the last look (None: there was none, e.g. `--full`)."""

    evaluated: int
    of: int
    stopped: str | None
    look: Look | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"evaluated": self.evaluated, "of": self.of, "stopped": self.stopped}
        if self.look is not None:
            lk = self.look
            out["look"] = {"passed": lk.passed, "n": lk.n, "interval": [lk.lo, lk.hi], "level": lk.level,
                           "side": lk.side}
        return out


def run_rule(total: int, answer: Callable[[list[int]], list[bool | None]], threshold: float, *,
             chunk: int = CHUNK, minimum: int = MIN_SAMPLE, alpha: float = ALPHA) -> Sample:
    """Answer indices of `sample_order(total)` a chunk at a time (`answer` gives pass/fail per index,
    None where undefined: a generation error) and stop at the first look that decides."""
    order = sample_order(total)
    planned = set(looks(total, chunk=chunk, minimum=minimum))
    level = look_level(total, alpha=alpha, chunk=chunk, minimum=minimum)
    passed = defined = done = 0
    look = None
    while done < total:
        step = order[done:done + chunk]
        for ok in answer(step):
            if ok is not None:
                defined += 1
                passed += bool(ok)
        done += len(step)
        if done in planned:
            look = decide(passed, defined, threshold, level)
            if look.side is not None:
                return Sample(done, total, look.why, look)
    return Sample(done, total, None, look)


def evaluate_sample(project: Project, subject: Any, items: list[EvalItem], settings: DecodeSettings, *,
                    threshold: float | None, say: Say,
                    progress: Callable[[int], None] | None = None) -> tuple[Any, list[EvalItem], Sample]:
    """`subject` answers `items` under the stopping rule against `threshold` (None: all of them, in one
    go). Returns its evaluation of the items it answered, those items (in the order answered), and the
    sample. Regression prompts are not asked here."""
    from tunesmith.evaluate.metrics import aggregate
    from tunesmith.evaluate.subject import SubjectEval, evaluate_subject

    if threshold is not None and _all_cached(subject, items, settings):
        say(f"{subject.name}: every test answer is in the generation cache: all {len(items)} count")
        threshold = None
    if threshold is None:
        ev = evaluate_subject(project, subject, items, [], settings, say=say, progress=progress)
        return ev, items, Sample(len(items), len(items), None, None)
    scores: list[Any] = []
    gens: list[Any] = []
    answered: list[EvalItem] = []

    def answer(indices: list[int]) -> list[bool | None]:
        chunk = [items[i] for i in indices]
        done = len(answered)
        part = evaluate_subject(project, subject, chunk, [], settings, say=lambda _m: None,
                                progress=None if progress is None else (lambda n: progress(done + n)))
        scores.extend(part.test_scores)
        gens.extend(part.test_generations)
        answered.extend(chunk)
        return [None if s.error is not None else s.exact_match for s in part.test_scores]

    level = look_level(len(items))
    say(f"{subject.name}: answering the test set {CHUNK} prompts at a time in a seeded random order, until the "
        f"{percent(level)} interval of its pass rate clears the {threshold:.2f} bar (all {len(items)}: --full)")
    sample = run_rule(len(items), answer, threshold)
    if sample.stopped:
        say(f"{subject.name}: stopped after {sample.evaluated} of {sample.of}: {sample.stopped}")
    return SubjectEval(subject.name, scores, gens, {}, [], aggregate(scores)), answered, sample


def _all_cached(subject: Any, items: list[EvalItem], settings: DecodeSettings) -> bool:
    """Whether `subject` has answered every item under `settings` before (an `eval` did, say): then the
    whole test set costs nothing, and stopping early would only throw its answers away."""
    from tunesmith.evaluate.cache import cache_key

    backend = subject.backend
    cache = getattr(backend, "cache", None)
    if cache is None:
        return False
    keys = {cache_key(backend.fingerprint, it.chat, settings) for it in items}
    return len(cache.get_many(keys)) == len(keys)


def sample_line(summary: dict[str, Any]) -> str | None:
    """One line on what `baseline` left out, for people; None when it answered everything."""
    labelled = [("base", summary.get("sample"))] + [
        (v.get("label", role), v.get("sample")) for role, v in (summary.get("constrained") or {}).items()]
    samples = [(label, s) for label, s in labelled if s]
    not_asked = (summary.get("regression") or {}).get("not_asked")
    if not not_asked and not any(s.get("stopped") for _, s in samples):
        return None
    parts = [f"{label}: {s['evaluated']} of {s['of']} test prompts, stopped early: {s['stopped']}" if s.get("stopped")
             else f"{label}: all {s['of']} test prompts" for label, s in samples]
    if not_asked:
        parts.append(f"regression suite ({not_asked} prompts) not asked: no pass rate reached the bar, so it "
                     "cannot change the answer")
    return "; ".join(parts) + " (--full asks everything)"


def of_test_set(sample: dict[str, Any] | None) -> str:
    """'the test set', or 'a random 16 of the 91 test prompts' when the sample stopped early."""
    if not sample or not sample.get("stopped"):
        return "the test set"
    return f"a random {sample['evaluated']} of the {sample['of']} test prompts"
