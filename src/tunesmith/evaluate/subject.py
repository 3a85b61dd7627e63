"""One subject's evaluation pass: which model answers (`Subject`: a run, the base model, a hosted job or an
endpoint), its answers to the sealed test set and the regression suite, scored, stored and gated.

The commands that drive passes (`eval`, `baseline`, `compare`, `accept`) are in `evaluate.api`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.evaluate.types import DecodeSettings, EvalItem, Generation
from tunesmith.progress import Say
from tunesmith.project import Project
from tunesmith.runs import RunModel


@dataclass
class Subject:
    """Something that answers prompts: the base model, a run's adapter, a merged checkpoint, an endpoint."""

    name: str
    run_id: str | None
    backend: Any
    model_names: list[str] = field(default_factory=list)
    #: what this subject is compared with; None: the project's base model on this machine
    base: Subject | None = None
    #: counts tokens as this subject's model does (answer budgets); None: the project's base tokenizer
    token_lengths: Callable[[list[str]], list[int]] | None = None
    #: what to tell the user once about the choice of model (a run trained on another base than the project's)
    warning: str | None = None
    #: which engine answers ("transformers", "llamacpp" with its quant and file, "endpoint"): stored and reported
    engine: dict[str, Any] = field(default_factory=lambda: {"engine": "transformers"})


@dataclass
class SubjectEval:
    subject: str
    test_scores: list[Any]
    test_generations: list[Generation]
    regression: dict[str, Any]  # id -> AssertionResult
    regression_generations: list[Generation]
    aggregate: dict[str, Any]
    judge: dict[str, Any] | None = None


def cache_for(project: Project):
    from tunesmith.evaluate.cache import GenerationCache

    return GenerationCache(project.root / ".tunesmith" / "generations.sqlite")


def resolve_subject(project: Project, ref: str, *, endpoint: str | None = None, api_key: str | None = None,
                    batch_size: int | None = None, engine: str = "transformers", quant: str | None = None,
                    gguf_adapter: bool = False, say: Say | None = None) -> Subject:
    from tunesmith.evaluate.cache import CachedBackend
    from tunesmith.evaluate.generate import EndpointBackend, LocalBackend
    from tunesmith.models.resolve import resolve_model

    from tunesmith.inference.llamacpp_backend import check_engine

    cache = cache_for(project)
    check_engine(engine, quant, gguf_adapter)  # int8 is the transformers engine's, other quants GGUF types
    if engine == "llamacpp":
        return _gguf_subject(project, ref, endpoint, quant or "f16", say or (lambda _m: None), cache,
                             gguf_adapter=gguf_adapter)
    if endpoint is not None:
        if quant is not None:
            raise UsageError(f"--quant {quant} quantises a model on this machine, not an --endpoint",
                             "leave out --quant, or --endpoint")
        backend = EndpointBackend(endpoint, ref, api_key=api_key)
        return Subject(f"endpoint:{ref}", None, CachedBackend(backend, cache), [ref], engine={"engine": "endpoint"})
    if ref == "base":
        base = resolve_model(project.base_model)
        return _transformers_subject("base", None, LocalBackend(base.path, batch_size=batch_size, quant=quant),
                                     cache, [project.base_model])
    path = Path(ref)
    if path.is_dir() and (path / "config.json").exists():
        return _transformers_subject(f"dir:{path.resolve()}", None,
                                     LocalBackend(path, batch_size=batch_size, quant=quant), cache, [str(path)])
    record = project.registry().get(ref)
    from tunesmith.train.hosted.job import is_hosted

    if is_hosted(record):
        if quant is not None:
            raise UsageError(f"run {record.id} was trained on a hosted API: there is no local model to quantise",
                             "evaluate it without --quant")
        return _hosted_subject(record, cache)
    return _run_subject(record.model(project.base_model), cache, batch_size, quant)


def _run_subject(run: RunModel, cache: Any, batch_size: int | None, quant: str | None = None) -> Subject:
    """A run trained here answers with its adapter on the base it was trained on, or with its full model.
    When the project's base_model changed since, the run is compared with (and its answer budget counted
    in the tokens of) the base it was tuned from: the project's new base says nothing about what it learned."""
    from tunesmith.evaluate.generate import LocalBackend

    backend = LocalBackend(run.checkpoint_dir, adapter_path=run.adapter_dir, batch_size=batch_size, quant=quant)
    subject = _transformers_subject(run.run_id, run.run_id, backend, cache, [run.run_id])
    subject.warning = run.warning
    if run.warning is not None:
        base_dir = run.base_path or run.resolve_base()
        base = LocalBackend(base_dir, batch_size=batch_size, quant=quant)
        subject.base = _transformers_subject(f"base:{run.base_ref}", None, base, cache, [run.base_ref])
        subject.token_lengths = _token_counter(base_dir)
    return subject


def _transformers_subject(name: str, run_id: str | None, backend: Any, cache: Any, model_names: list[str]) -> Subject:
    from tunesmith.evaluate.cache import CachedBackend

    engine: dict[str, Any] = {"engine": "transformers", "dtype": backend.dtype}
    if backend.quant:
        engine["quant"] = backend.quant
        engine["kernel"] = backend.int8_kernel
    # stored apart from the checkpoint's own evaluation (as llama.cpp's are): the gate, compare and the model
    # card read a run's name as its full-precision score
    return Subject(name + engine_suffix(engine), run_id, CachedBackend(backend, cache), model_names, engine=engine)


def _gguf_subject(project: Project, ref: str, endpoint: str | None, quant: str, say: Say, cache: Any, *,
                  gguf_adapter: bool = False) -> Subject:
    """A run or the base model answering from its GGUF file through llama.cpp (`--engine llamacpp`); with
    `gguf_adapter`, a run answers from the base model's GGUF with its LoRA as a GGUF adapter."""
    from tunesmith.inference import llamacpp_backend as L
    from tunesmith.models.resolve import resolve_model

    if endpoint is not None:
        raise UsageError("--engine llamacpp evaluates a GGUF file on this machine, not an --endpoint",
                         "leave out --endpoint, or --engine")
    if gguf_adapter and ref == "base":
        raise UsageError("--gguf-adapter puts a run's LoRA on the base model's GGUF: 'base' has no adapter",
                         "give a run id, or leave out --gguf-adapter")
    L.require_llamacpp()  # before minutes of exporting
    if ref == "base":
        resolved = resolve_model(project.base_model)
        return _llamacpp_subject("base", None, project.base_model, L.base_gguf(
            project, project.base_model, resolved.path, quant, say), resolved.path, quant, cache)
    if Path(ref).is_dir():
        raise UsageError(f"--engine llamacpp evaluates a run's GGUF export, not the directory {ref}",
                         "give a run id (its export is made when missing) or 'base'")
    record = project.registry().get(ref)
    from tunesmith.train.hosted.job import is_hosted

    if is_hosted(record):
        raise UsageError(f"run {record.id} was trained on a hosted API: there is no local model for llama.cpp",
                         "evaluate it without --engine llamacpp")
    run = record.model(project.base_model)
    if gguf_adapter:
        subject = _adapter_subject(project, run, quant, say, cache)
    else:
        subject = _llamacpp_subject(run.run_id, run.run_id, run.run_id, L.run_gguf(project, run, quant, say),
                                    run.tokenizer_dir, quant, cache)
    subject.warning = run.warning
    if run.warning is not None:
        base_dir = run.base_path or run.resolve_base()
        subject.base = _llamacpp_subject(f"base:{run.base_ref}", None, run.base_ref,
                                         L.base_gguf(project, run.base_ref, base_dir, quant, say), base_dir, quant,
                                         cache)
        subject.token_lengths = _token_counter(base_dir)
    return subject


def _adapter_subject(project: Project, run: RunModel, quant: str, say: Say, cache: Any) -> Subject:
    """The base the run was trained on, as GGUF at `quant`, with the run's LoRA loaded as a GGUF adapter."""
    from tunesmith.inference import llamacpp_backend as L

    if run.adapter_dir is None:
        raise UsageError(f"--gguf-adapter: run {run.run_id} is a full fine-tune, it has no LoRA adapter",
                         "evaluate its merged GGUF export: leave out --gguf-adapter")
    base_dir = run.base_path or run.resolve_base()
    base_file = L.base_gguf(project, run.base_ref, base_dir, quant, say)
    return _llamacpp_subject(run.run_id, run.run_id, run.run_id, base_file, run.tokenizer_dir, quant, cache,
                             lora=L.run_adapter_gguf(project, run, quant, say))


def _llamacpp_subject(name: str, run_id: str | None, model_name: str, gguf: Path, tokenizer_dir: Path, quant: str,
                      cache: Any, *, lora: Path | None = None) -> Subject:
    from tunesmith.evaluate.cache import CachedBackend
    from tunesmith.inference.llamacpp_backend import LlamaCppBackend

    backend = LlamaCppBackend(gguf, tokenizer_dir, quant=quant, lora_path=lora)
    # stored under its own name: a run's scores (its model card, the gate, compare) stay the checkpoint's,
    # whichever engine answered last; the adapter path's apart from the merged file's
    suffix = engine_suffix({"engine": "llamacpp", "quant": quant}) + ("+lora" if lora is not None else "")
    return Subject(f"{name}{suffix}", run_id, CachedBackend(backend, cache), [model_name],
                   engine=backend.describe())


def _token_counter(model_dir: Path) -> Callable[[list[str]], list[int]]:
    from tunesmith.models.chat import token_lengths
    from tunesmith.models.resolve import tokenizer_in

    tokenizer = tokenizer_in(model_dir)
    return lambda texts: token_lengths(tokenizer, texts)


def _hosted_subject(record: Any, cache: Any) -> Subject:
    """A run trained on a hosted API answers through the provider's endpoint, under the fine-tuned model's
    name, and is compared with the hosted model it was tuned from (not the project's local base)."""
    from tunesmith.evaluate.cache import CachedBackend
    from tunesmith.evaluate.generate import EndpointBackend
    from tunesmith.inference.openai_client import api_key_from
    from tunesmith.train.hosted.job import read_state

    state = read_state(Path(record.path))
    model = state.get("fine_tuned_model")
    if record.status != "completed" or not model:
        raise UsageError(f"run {record.id} has no fine-tuned model yet (status {record.status})",
                         f"`tunesmith train --resume {record.id}` waits for the job and records the model")
    url, key = state["base_url"], api_key_from(state.get("api_key_env") or "OPENAI_API_KEY")
    base_model = record.base_model
    base = Subject(f"base:{base_model}", None, CachedBackend(EndpointBackend(url, base_model, api_key=key), cache),
                   [base_model], engine={"engine": "endpoint"})
    from tunesmith.train.hosted.tokens import counter_for

    encoding = counter_for(base_model).encoding
    return Subject(record.id, record.id, CachedBackend(EndpointBackend(url, model, api_key=key), cache),
                   [model, base_model], base=base, engine={"engine": "endpoint"},
                   token_lengths=lambda texts: [len(encoding.encode(t, disallowed_special=())) for t in texts])


def _validator(project: Project):
    schema = project.load_schema()
    if schema is None:
        return None
    from jsonschema import validators

    return validators.validator_for(schema)(schema)


def evaluate_subject(project: Project, subject: Subject, test: list[EvalItem], regression: list[EvalItem],
                     settings: DecodeSettings, *, say: Say, progress: Callable[[int], None] | None = None) -> SubjectEval:
    from tunesmith.evaluate.metrics import aggregate, load_scorer, score_item
    from tunesmith.evaluate.regression import check_assertions

    say(f"{subject.name}: answering {len(test)} test and {len(regression)} regression prompts")
    if settings.contract is None:
        gens = subject.backend.generate([it.chat for it in test + regression], settings, progress)
        test_gens, reg_gens = gens[: len(test)], gens[len(test):]
    else:  # regression assertions (contains, not_contains, scorers) read whole answers: never cut those
        test_gens = subject.backend.generate([it.chat for it in test], settings, progress)
        done = len(test)
        reg_gens = subject.backend.generate([it.chat for it in regression], replace(settings, contract=None),
                                            None if progress is None else (lambda n: progress(done + n)))
    schema, regex = project.load_schema(), project.output.regex
    scorers = [load_scorer(spec, project.root) for spec in project.eval.scorers]
    scores = [score_item(it, g, schema=schema, regex=regex, scorers=scorers, expects_json=project.output.expects_json)
              for it, g in zip(test, test_gens)]
    validator = _validator(project)
    # A regression `scorer` assertion names its scorer by spec (module:function or file.py:function).
    specs = {a["name"] for it in regression for a in it.assertions if a["type"] == "scorer"}
    named = {spec: load_scorer(spec, project.root) for spec in specs}
    reg = {it.id: check_assertions(it, g.text, validator=validator, scorers=named) for it, g in zip(regression, reg_gens)}
    return SubjectEval(subject.name, scores, test_gens, reg, reg_gens, aggregate(scores))


def store_eval(project: Project, ev: SubjectEval, subject: Subject, test: list[EvalItem],
               regression: list[EvalItem], settings: DecodeSettings) -> None:
    from tunesmith.evaluate.store import EvalStore
    from tunesmith.runs import seal_sha256

    store = EvalStore(project.registry())
    fp = getattr(subject.backend, "fingerprint", "")
    summary = {k: v.to_dict() for k, v in ev.aggregate.items()}
    stored = {"decode": settings.key(), "engine": subject.engine}
    if test:  # none: only the regression suite was asked (`baseline`), the stored test results stand
        store.save(subject=ev.subject, run_id=subject.run_id, split="test", fingerprint=fp,
                   settings=stored, summary=summary,
                   items=[(it.id, s.exact_match, s.to_dict(), g.text)
                          for it, s, g in zip(test, ev.test_scores, ev.test_generations)],
                   seal_sha256=seal_sha256(project.path(project.data.test)))
    if regression:
        passed = sum(r.passed for r in ev.regression.values())
        store.save(subject=ev.subject, run_id=subject.run_id, split="regression", fingerprint=fp,
                   settings=stored, summary={"passed": passed, "total": len(regression)},
                   items=[(it.id, ev.regression[it.id].passed, {"failures": ev.regression[it.id].failures,
                                                               "pending": ev.regression[it.id].pending}, g.text)
                          for it, g in zip(regression, ev.regression_generations)])


def seal_summary(project: Project, subject: Subject) -> dict[str, Any]:
    """The seal this evaluation is scored on and, for a run, the one it was trained on."""
    from tunesmith.runs import seal_sha256

    trained = project.registry().get(subject.run_id).test_seal_sha256 if subject.run_id else None
    return {"scored_on": seal_sha256(project.path(project.data.test)), "trained_on": trained}


def seal_warning(run_id: str | None, seal: dict[str, Any]) -> str | None:
    """What to say when a run is scored on another test set than the one it was trained with."""
    from tunesmith.runs import short_seal

    trained, scored = seal.get("trained_on"), seal.get("scored_on")
    if run_id is None or not trained or not scored or trained == scored:
        return None
    return (f"run {run_id} was trained on another test seal ({short_seal(trained)}; now {short_seal(scored)}): "
            "the test set changed since, so its training data may hold rows of this test set, and its scores are "
            "not comparable with those on its old seal")


def paired_comparisons(base: SubjectEval, tuned: SubjectEval) -> dict[str, Any]:
    """Per metric: the paired difference tuned - base on the items both answered, and the verdict."""
    from tunesmith.evaluate.paired import compare_scores

    return compare_scores(base.test_scores, tuned.test_scores, tuned.aggregate)


def engine_suffix(engine: dict[str, Any]) -> str:
    """"@llamacpp-f16", "@transformers-int8" or "": what a subject's stored name carries for the engine that
    answered, so a lossy evaluation is never read as the checkpoint's own."""
    if engine.get("engine") == "llamacpp":
        return f"@llamacpp-{engine.get('quant')}"
    if engine.get("engine", "transformers") == "transformers" and engine.get("quant"):
        return f"@transformers-{engine['quant']}"
    return ""


def gate(project: Project, candidate: SubjectEval, suffix: str = "") -> dict[str, Any]:
    """New regression failures against the accepted run (or the base model when none is accepted), as answered
    by the same engine and quantisation (`suffix`, e.g. "@transformers-int8"): like is compared with like."""
    from tunesmith.evaluate.regression import flips, new_failures
    from tunesmith.evaluate.store import EvalStore

    store = EvalStore(project.registry())
    baseline_name = (store.accepted() or "base") + suffix
    baseline = store.latest(baseline_name, "regression")
    after = {k: r.passed for k, r in candidate.regression.items()}
    if baseline is None:
        return {"baseline": None, "new_failures": [], "flips": [], "status": "pass",
                "note": f"no {baseline_name} evaluation to compare with" if suffix
                else "no accepted run or base evaluation to compare with"}
    before = {k: v.passed for k, v in baseline.items.items()}
    failing = new_failures(before, after)
    status = "fail" if len(failing) > project.eval.max_new_failures else "pass"
    return {"baseline": baseline_name, "new_failures": failing, "flips": flips(before, after), "status": status,
            "threshold": project.eval.max_new_failures}


class GateFailed(TunesmithError):
    exit_code = 1
