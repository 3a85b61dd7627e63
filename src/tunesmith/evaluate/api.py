"""Library entry points behind `tunesmith eval`, `baseline`, `compare`, `accept` and `check --base`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.evaluate.items import regression_items, test_items
from tunesmith.evaluate.subject import (
    SubjectEval, engine_suffix, evaluate_subject, gate, paired_comparisons, resolve_subject, seal_summary, seal_warning, store_eval,
)
from tunesmith.evaluate.types import DecodeSettings, EvalItem
from tunesmith.progress import Say
from tunesmith.project import Project, load_project


@dataclass
class EvalOptions:
    endpoint: str | None = None
    api_key: str | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None
    judge: bool = True
    allow_self_judging: bool = False
    gate: bool = False
    report: bool = True
    #: cut an answer once it can no longer meet the output contract (contract-aware stopping)
    early_stop: bool = True
    #: also decode constrained to the output contract; None: the project's eval.constrained
    #: (baseline: baseline.constrained)
    constrained: bool | None = None
    #: baseline only: training examples shown before each test prompt; None: baseline.few_shot
    few_shot: int | None = None
    #: baseline only: answer the whole test set and the regression suite instead of stopping once the
    #: pass rate's interval clears the bar (`evaluate.sequential`); None: baseline.full
    full: bool | None = None
    #: who answers: "transformers" (the checkpoint, default) or "llamacpp" (the GGUF export, `inference.llamacpp_backend`)
    engine: str = "transformers"
    #: with engine "llamacpp": which export (f16 by default; q4_1: the builtin model's own file, base only)
    quant: str | None = None
    #: with engine "llamacpp": the base model's GGUF plus the run's LoRA as a GGUF adapter, not the merged export
    gguf_adapter: bool = False


@dataclass
class EvalOutcome:
    subject: str
    summary: dict[str, Any]
    gate: dict[str, Any] | None = None
    report: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "summary": self.summary, "gate": self.gate,
                "report": str(self.report) if self.report else None, "warnings": self.warnings}


def _early_stop(project: Project, opts: EvalOptions, test: list[EvalItem], say: Say | None, backend: Any) -> Any:
    """The contract answers are cut at, or None. Cutting is only lossless when the expected answers meet
    the contract themselves (then an answer that broke it can never match one): otherwise it stays off."""
    from tunesmith.data.checks.contract import AnswerContract
    from tunesmith.inference.contract_stop import ContractSpec

    spec = ContractSpec(json=project.output.expects_json, regex=project.output.regex)
    if not opts.early_stop or not spec.active or not getattr(backend, "honours_contract", False):
        return None  # an endpoint decodes everything anyway: its answers stay cached under the plain key
    if project.eval.scorers or (opts.judge and project.eval.judge is not None):
        if say is not None:
            say("answers are decoded to the end: the judge and user scorers read whole answers")
        return None
    contract = AnswerContract(None, project.output.regex, project.output.expects_json)
    broken = sum(1 for it in test if it.expected is not None and not contract.check(it.expected).ok)
    if broken:
        if say is not None:
            say(f"answers are decoded to the end: {broken} expected answer(s) break the output contract "
                "themselves (`tunesmith check` names them)")
        return None
    return spec


def _settings(project: Project, opts: EvalOptions, say: Say | None = None, subject: Any = None,
              test: list[EvalItem] | None = None) -> DecodeSettings:
    contract = _early_stop(project, opts, test or [], say, getattr(subject, "backend", None))
    if opts.max_new_tokens:
        return DecodeSettings(max_new_tokens=opts.max_new_tokens, contract=contract)
    from tunesmith.evaluate.budget import answer_token_budget

    budget, why = answer_token_budget(project, getattr(subject, "token_lengths", None))
    if say is not None:
        say(f"answers of up to {budget} new tokens ({why})"
            + ("; an answer that breaks the output contract is cut there" if contract else ""))
    return DecodeSettings(max_new_tokens=budget, contract=contract)


def _check_engine(opts: EvalOptions) -> None:
    """Flags that cannot go together with the engine, before anything is loaded or exported."""
    from tunesmith.inference.llamacpp_backend import check_engine

    check_engine(opts.engine, opts.quant, opts.gguf_adapter)


def _engines(subject: Any, base: Any) -> dict[str, Any]:
    """Which engine (and GGUF quantisation) answered, by role, as `summary["speed"]` is keyed."""
    if base is None:
        return {"base": subject.engine}
    return {"tuned": subject.engine, "base": base.engine}


def _estimates(ev: SubjectEval) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in ev.aggregate.items()}


def _regression_summary(ev: SubjectEval) -> dict[str, Any]:
    return {"passed": sum(r.passed for r in ev.regression.values()), "total": len(ev.regression),
            "failing": sorted(k for k, r in ev.regression.items() if not r.passed)}


@dataclass
class _Evaluated:
    """What `evaluate` worked with, for `baseline` to go on from (the loaded subject, its settings)."""

    project: Project
    subject: Any
    test: list[EvalItem]
    settings: DecodeSettings
    regression: list[EvalItem] = field(default_factory=list)


def evaluate(project_dir: Path | str, ref: str, opts: EvalOptions | None = None, *, say: Say | None = None,
             progress: Callable[[int], None] | None = None) -> EvalOutcome:
    return _evaluate(project_dir, ref, opts or EvalOptions(), say or (lambda _m: None), progress)[0]


def _constraint(project: Project, opts: EvalOptions) -> Any:
    """The constraint `eval` also decodes under, or None (not asked for)."""
    from tunesmith.evaluate.constrained import require_constraint

    if opts.constrained is False or (opts.constrained is None and not project.eval.constrained):
        return None
    return require_constraint(project, "--constrained" if opts.constrained else "eval.constrained: true")


def _evaluate(project_dir: Path | str, ref: str, opts: EvalOptions, say: Say,
              progress: Callable[[int], None] | None) -> tuple[EvalOutcome, _Evaluated]:
    from tunesmith.evaluate.speed import SpeedMeter

    _check_engine(opts)
    project = load_project(project_dir)
    constraint = _constraint(project, opts)
    test = test_items(project)
    regression, warnings = regression_items(project)
    subject = resolve_subject(project, ref, endpoint=opts.endpoint, api_key=opts.api_key, batch_size=opts.batch_size,
                              engine=opts.engine, quant=opts.quant, gguf_adapter=opts.gguf_adapter, say=say)
    if subject.warning is not None:
        warnings.append(subject.warning)
        say(f"warning: {subject.warning}")
    base = None
    # "base@llamacpp-f16" and "base@transformers-int8" are the base too: not compared with itself
    if ref != "base" or opts.endpoint is not None:
        base = subject.base or resolve_subject(project, "base", batch_size=opts.batch_size, engine=opts.engine,
                                               quant=opts.quant, say=say)
    if constraint is not None:
        constraint = _constrainable(constraint, [s for s in (subject, base) if s is not None], opts, say, warnings)
    settings = _settings(project, opts, say, subject, test)
    meter = SpeedMeter(subject.backend)
    tuned = evaluate_subject(project, subject, test, regression, settings, say=say, progress=progress)
    speed = {"base" if base is None else "tuned": meter.result()}
    store_eval(project, tuned, subject, test, regression, settings)
    summary: dict[str, Any] = {"test": {"n": len(test), "metrics": _estimates(tuned)},
                               "regression": _regression_summary(tuned)}
    base_eval = None
    if base is not None:
        meter = SpeedMeter(base.backend)
        base_eval = evaluate_subject(project, base, test, regression, settings, say=say, progress=progress)
        speed["base"] = meter.result()
        store_eval(project, base_eval, base, test, regression, settings)
        comparisons = paired_comparisons(base_eval, tuned)
        summary["base"] = {"metrics": _estimates(base_eval), "regression": _regression_summary(base_eval)}
        summary["comparison"] = {k: c.to_dict() for k, c in comparisons.items()}
    summary["speed"] = speed
    summary["engine"] = _engines(subject, base)
    summary["seal"] = seal_summary(project, subject)
    if (warning := seal_warning(subject.run_id, summary["seal"])) is not None:
        warnings.append(warning)
        say(f"warning: {warning}")
    variants = None if constraint is None else _constrained_variants(
        project, subject, base, test, settings, constraint, opts, say, progress, warnings)
    if variants:
        summary["constrained"] = variants
    if opts.judge and project.eval.judge is not None:
        from tunesmith.evaluate.judged import run_judge

        summary["judge"] = run_judge(project, subject, tuned, base_eval, test, allow_self=opts.allow_self_judging, say=say)
    compared = ref != "base" or opts.endpoint is not None  # an endpoint's model named "base" is not ours
    gate_result = gate(project, tuned, engine_suffix(subject.engine)) if compared else None
    report = None
    if opts.report and subject.run_id is not None:
        from tunesmith.evaluate.report.build import write_run_report

        report = write_run_report(project, subject, tuned, base_eval, test, regression, summary, gate_result)
    outcome = EvalOutcome(subject.name, summary, gate_result, report, warnings)
    return outcome, _Evaluated(project, subject, test, settings, regression)


def _constrainable(constraint: Any, subjects: list[Any], opts: EvalOptions, say: Say, warnings: list[str]) -> Any:
    """`constraint` when every subject can decode under it. Asked for with --constrained, a subject that
    cannot is an error; asked for by eval.constrained, a warning (a hosted run's eval still runs)."""
    from tunesmith.evaluate.constrained import honours_constraint, unconstrained_error

    for s in subjects:
        if not honours_constraint(s):
            if opts.constrained:
                raise unconstrained_error(s)
            message = f"eval.constrained: skipped, {s.name} answers through an endpoint (no grammar mask there)"
            warnings.append(message)
            say(f"warning: {message}")
            return None
    return constraint


def _constrained_variants(project: Project, subject: Any, base: Any, test: list[EvalItem], settings: DecodeSettings,
                          constraint: Any, opts: EvalOptions, say: Say, progress: Callable[[int], None] | None,
                          warnings: list[str]) -> dict[str, Any] | None:
    """base + constrained (and tuned + constrained) on the test set, as summaries keyed by role."""
    from tunesmith.errors import TunesmithError
    from tunesmith.evaluate import constrained as C

    run_settings = C.constrained_settings(settings, constraint)
    roles = [("base", subject)] if base is None else [("base", base), ("tuned", subject)]
    out = {}
    try:
        for role, s in roles:
            out[role] = C.public(C.evaluate_variant(
                project, s, test, run_settings, label=C.variant_label(role, True, 0),
                name=C.variant_name(s.name, True, 0), say=say, progress=progress))
    except TunesmithError as exc:
        if opts.constrained or not C.is_grammar_error(exc):
            raise
        message = f"eval.constrained: skipped, the output contract cannot be enforced: {exc}"
        warnings.append(message)
        say(f"warning: {message}")
        return None
    return out


def base_passes(rate: float | None, regression_rate: float | None, threshold: float) -> bool:
    """The guide's rule: the base model right at least `threshold` (80 %) of the time on the test set, and
    on the regression suite when there is one, means fix the prompt, not the weights."""
    return rate is not None and rate >= threshold and (regression_rate is None or regression_rate >= threshold)


def baseline(project_dir: Path | str, opts: EvalOptions | None = None, *, say: Say | None = None,
             progress: Callable[[int], None] | None = None) -> EvalOutcome:
    """The guide: if the base model is already right > 80 % of the time, fix the prompt, not the weights;
    and try prompting first: the base constrained to the contract, with few-shot examples (`prompting`).

    Unless `full` (--full, baseline.full), the test set is answered a chunk at a time and each of the
    two stops once its pass rate's interval lies clear of the bar (`evaluate.sequential`); the summary's
    "sample" (and the variant's) says how many prompts were answered of how many, and why it stopped.
    The regression suite only matters to the answer when a pass rate reaches the bar (`base_passes`),
    so only then is it asked; `eval` asks it, and the rest of the test set, in any case."""
    import dataclasses

    from tunesmith.evaluate.prompting import prompting_variant, recommendation

    opts = opts or EvalOptions()
    say = say or (lambda _m: None)
    _check_engine(opts)
    project = load_project(project_dir)
    if opts.constrained:  # before minutes of generation: a project without a contract cannot do it
        from tunesmith.evaluate.constrained import require_constraint

        require_constraint(project, "--constrained")
    full = project.baseline.full if opts.full is None else opts.full
    threshold = project.eval.baseline_threshold
    # the plain base first; `eval.constrained` is eval's: baseline's own variant follows
    plain = dataclasses.replace(opts, constrained=False)
    if full:
        from tunesmith.evaluate.sequential import Sample

        outcome, done = _evaluate(project_dir, "base", plain, say, progress)
        outcome.summary["sample"] = Sample(len(done.test), len(done.test), None, None).to_dict()
    else:
        outcome, done = _base_sample(project_dir, plain, threshold, say, progress)
    project = done.project
    variant = prompting_variant(project, done.subject, done.test, done.settings, constrained=opts.constrained,
                                few_shot=opts.few_shot, say=say, warnings=outcome.warnings, progress=progress,
                                threshold=None if full else threshold)
    if variant is not None:
        from tunesmith.evaluate.constrained import public

        outcome.summary["constrained"] = {"base": public(variant)}
    rate = _pass_rate(outcome.summary["test"]["metrics"])
    v_rate = _pass_rate(variant["metrics"]) if variant is not None else None
    if not full and done.regression and (base_passes(rate, None, threshold) or base_passes(v_rate, None, threshold)):
        say("base: a pass rate reaches the bar, so the regression suite decides too")
        reg_eval = evaluate_subject(project, done.subject, [], done.regression, done.settings, say=say,
                                    progress=progress)
        store_eval(project, reg_eval, done.subject, [], done.regression, done.settings)
        outcome.summary["regression"] = _regression_summary(reg_eval)
    reg = outcome.summary["regression"]
    reg_rate = reg["passed"] / reg["total"] if reg["total"] else None
    outcome.summary["recommendation"] = recommendation(rate, reg_rate, threshold, variant,
                                                       outcome.summary.get("sample"))
    return outcome


def _pass_rate(metrics: dict[str, Any]) -> float | None:
    return (metrics.get("exact_match") or {}).get("mean")


def _base_sample(project_dir: Path | str, opts: EvalOptions, threshold: float, say: Say,
                 progress: Callable[[int], None] | None) -> tuple[EvalOutcome, _Evaluated]:
    """The plain base model on the test set under the stopping rule, stored and summarised like
    `_evaluate`'s; the regression suite is not asked here (`baseline` asks it when it matters)."""
    from tunesmith.evaluate.sequential import evaluate_sample
    from tunesmith.evaluate.speed import SpeedMeter

    project = load_project(project_dir)
    test = test_items(project)
    regression, warnings = regression_items(project)
    subject = resolve_subject(project, "base", endpoint=opts.endpoint, api_key=opts.api_key,
                              batch_size=opts.batch_size, engine=opts.engine, quant=opts.quant,
                              gguf_adapter=opts.gguf_adapter, say=say)
    # the settings `eval` uses for the base model too: the answers given here are its cache hits later
    settings = _settings(project, opts, say, subject, test)
    meter = SpeedMeter(subject.backend)
    ev, answered, sample = evaluate_sample(project, subject, test, settings, threshold=threshold, say=say,
                                           progress=progress)
    store_eval(project, ev, subject, answered, [], settings)
    not_asked = {"passed": 0, "total": 0, "failing": []}
    if regression:
        not_asked["not_asked"] = len(regression)
    summary: dict[str, Any] = {"test": {"n": len(answered), "metrics": _estimates(ev)}, "regression": not_asked,
                               "speed": {"base": meter.result()}, "engine": _engines(subject, None),
                               "sample": sample.to_dict(),
                               "seal": seal_summary(project, subject)}
    if opts.judge and project.eval.judge is not None:
        from tunesmith.evaluate.judged import run_judge

        summary["judge"] = run_judge(project, subject, ev, None, answered, allow_self=opts.allow_self_judging, say=say)
    return EvalOutcome(subject.name, summary, None, None, warnings), _Evaluated(project, subject, test, settings,
                                                                                 regression)


def accept(project_dir: Path | str, ref: str) -> str:
    from tunesmith.evaluate.store import EvalStore

    project = load_project(project_dir)
    registry = project.registry()
    name = "base" if ref == "base" else registry.get(ref).id
    store = EvalStore(registry)
    if store.latest(name, "regression") is None and project.data.regression:
        from tunesmith.errors import UsageError

        raise UsageError(f"{name} has no regression evaluation yet", f"run `tunesmith eval {name}` first")
    store.accept(name)
    return name


def compare_runs(project_dir: Path | str, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Per-prompt flips on the regression suite and paired test-set comparisons, from stored evaluations."""
    from tunesmith.errors import UsageError
    from tunesmith.evaluate.regression import flips
    from tunesmith.evaluate.store import EvalStore

    project = load_project(project_dir)
    registry = project.registry()
    names = ["base" if r == "base" else registry.get(r).id for r in (ref_a, ref_b)]
    store = EvalStore(registry)
    out: dict[str, Any] = {"a": names[0], "b": names[1]}
    tests = [store.latest(n, "test") for n in names]
    for n, t in zip(names, tests):
        if t is None:
            raise UsageError(f"{n} has not been evaluated", f"run `tunesmith eval {n}` first")
    from tunesmith.runs import seal_sha256

    seals = [registry.evaluation_seal(t.id) for t in tests]
    out["seals"] = {"a": seals[0], "b": seals[1], "current": seal_sha256(project.path(project.data.test))}
    out["warnings"] = _seal_warnings(names, seals, out["seals"]["current"])
    regs = [store.latest(n, "regression") for n in names]
    if all(regs):
        before = {k: v.passed for k, v in regs[0].items.items()}
        after = {k: v.passed for k, v in regs[1].items.items()}
        out["regression_flips"] = flips(before, after)
    from tunesmith.evaluate.paired import compare_scores, stored_scores

    scores = [stored_scores({i: item.scores for i, item in t.items.items()}) for t in tests]
    # the metrics both evaluations aggregated, in the order eval reports them
    metrics = [m for m in tests[1].summary if m in tests[0].summary]
    comparisons = {m: c.to_dict() for m, c in compare_scores(scores[0], scores[1], metrics).items()}
    common = set(tests[0].items) & set(tests[1].items)
    out["comparison"] = comparisons
    out["items"] = len(common)
    return out


def _seal_warnings(names: list[str], seals: list[str | None], current: str | None) -> list[str]:
    """Items pair up by test line: on two seals, the same line is two different rows."""
    from tunesmith.runs import short_seal

    unknown = [n for n, seal in zip(names, seals) if seal is None]
    if unknown:
        return [f"{n} was evaluated before tunesmith recorded test seals: whether both were scored on the same "
                f"test set is unknown; re-evaluate it (`tunesmith eval {n}`)" for n in dict.fromkeys(unknown)]
    if seals[0] != seals[1]:
        stale = [n for n, seal in zip(names, seals) if seal != current] or names
        return [f"{names[0]} and {names[1]} were scored on different test sets (seal {short_seal(seals[0])} vs "
                f"{short_seal(seals[1])}): the paired comparison matches test items by line, so it compares "
                "different rows; re-evaluate on the current seal: "
                + ", ".join(f"`tunesmith eval {n}`" for n in stale)]
    return []


def base_correct_lines(project_dir: Path | str, file: Path, *, max_new_tokens: int | None = None,
                       say: Say | None = None, progress: Callable[[int], None] | None = None) -> tuple[list[int], int]:
    """Lines of `file` whose expected answer the base model already produces (the guide's leakage check)."""
    from tunesmith.evaluate.items import examples_as_items
    from tunesmith.evaluate.metrics import score_item

    project = load_project(project_dir)
    items = examples_as_items(file, project.system_prompt, prefix="train", what="file")
    subject = resolve_subject(project, "base")
    (say or (lambda _m: None))(f"base model answers {len(items)} training prompts (cached for next time)")
    settings = _settings(project, EvalOptions(max_new_tokens=max_new_tokens), subject=subject, test=items)
    gens = subject.backend.generate([it.chat for it in items], settings, progress)
    correct = [it.line for it, g in zip(items, gens)
               if score_item(it, g, schema=None, regex=None).exact_match]
    return correct, len(items)
