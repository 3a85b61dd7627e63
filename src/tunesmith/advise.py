"""`tunesmith advise`: the guide's "should you fine-tune at all?" tree, answered from facts.

Each question is answered from the project where a fact exists (the task sentence, the data, a stored
base-model evaluation), from a flag where the user answers it, or reported as unanswered; the tree
never blocks on a missing answer. The first verdict that says "not fine-tuning" decides the action
(`PRIORITY`); when none does, the method (LoRA / QLoRA / full / hosted) follows from the model size
and the memory present, with the training plan's own QLoRA rule. Every verdict names a next command.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import UsageError
from tunesmith.models.size import fmt_params, model_params, ram_gb
from tunesmith.train.hosted.limits import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from tunesmith.data.formats import Example
    from tunesmith.project import Project

#: the guide: "fine-tuning is for behaviour, not knowledge"; at or above this share of answer content
#: absent from the prompt, the answers carry facts the prompt lacks
KNOWLEDGE_SHARE = 0.5
#: rows read for the knowledge measurement (the share settles long before; big files stay fast)
KNOWLEDGE_SAMPLE = 5000
#: the guide's "Better code reviews" is not a sentence: under this many words, a task is a label
MIN_TASK_WORDS = 6
#: the plan's headroom (train/plan.py): weights may take half the memory, the rest is activations
HEADROOM = 0.5
#: DESIGN.md measured 81-380 trained tokens/s for a 135M model on 2 CPU cores; time grows with the
#: parameters, so above ~1B a 500-example run takes days on a CPU
CPU_MAX_PARAMS = 1_000_000_000
#: "full fine-tuning only for a small model": weights + gradients + Adam moments, mixed precision
FULL_MAX_PARAMS, FULL_BYTES_PER_PARAM = 1_000_000_000, 16
#: the guide's cheapest OpenAI model that supports fine-tuning
#: which "not fine-tuning" verdict wins when several apply: an unusable task first; then a base model
#: that already passes (cheapest fix); then knowledge (more data would not help); then data
PRIORITY = ("write-the-task", "prompt", "rag", "few-shot", "collect-data")

_VAGUE = re.compile(r"\b(better|improved?|improves|good|nicer|smarter|more helpful|high[- ]quality)\b", re.I)
_CONCRETE = re.compile(r"\b(json|yaml|csv|xml|markdown|keys?|fields?|object|schema|regex|label\w*|one of|exactly|"
                       r"always|never|only|format\w*|sentences?|words|bullets?|table|translat\w*|classif\w*|"
                       r"extract\w*|summari[sz]\w*|(answer|reply|respond)s? with)\b", re.I)
_TOKEN = re.compile(r"[^\W_]+")  # runs of letters/digits: snake_case and dotted names split the same on both sides
_STOP = frozenset("""the and for are but not you your with this that from have has had was were will would can could
should its into than then them they their there what when where which who whom why how all any each few more most
other some such only own same too very just about above after again against below between both during before off
out over under until upon yes true false null none also one two three per via""".split())


@dataclass
class Question:
    id: str
    answer: Any
    source: str  # data | flag | baseline | project | unknown
    detail: str
    verdict: str
    next: str | None = None
    #: the action this verdict calls for instead of fine-tuning (None: fine-tuning may go on)
    action: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "action"}


@dataclass
class Recommendation:
    action: str  # fine-tune | prompt | few-shot | rag | collect-data | write-the-task
    method: str | None  # lora | qlora | full | hosted, only when fine-tuning
    why: list[str]
    next: str


@dataclass
class Advice:
    project: str | None
    questions: list[Question]
    recommendation: Recommendation
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "questions": [q.to_dict() for q in self.questions],
                "recommendation": asdict(self.recommendation), "facts": self.facts}


@dataclass
class AdviseFlags:
    """Answers given on the command line; each wins over what the project or the data says."""

    task: str | None = None
    task_kind: str | None = None
    examples: int | None = None
    knowledge: bool | None = None  # True: answers need facts; False: behaviour only
    base_pass_rate: float | None = None
    base_model: str | None = None
    params: int | None = None


def advise(project_dir: Path | None, flags: AdviseFlags | None = None, *, shown_as: str | None = None) -> Advice:
    """The advice for PROJECT_DIR (None: from the flags alone). `shown_as` is how commands name it."""
    from tunesmith.project import DEFAULT_MODEL, load_project

    flags = flags or AdviseFlags()
    project = load_project(project_dir) if project_dir is not None else None
    p = shlex.quote(shown_as or str(project_dir)) if project_dir is not None else None
    kind = flags.task_kind or (project.task_kind if project else "format")
    facts: dict[str, Any] = {"task_kind": kind}
    task = flags.task if flags.task is not None else (project.task if project else None)
    questions = [task_question(task, "flag" if flags.task is not None else "project", p)]
    n, sample, files = _examples(project, flags)
    facts.update(examples=n, data_files=[str(f) for f in files])
    questions.append(examples_question(n, kind, "flag" if flags.examples is not None else "data", files, project, p))
    questions.append(knowledge_question(flags.knowledge, sample, p))
    questions.append(baseline_question(project, flags.base_pass_rate, p))
    questions.append(constrained_decoding_question(project, p))
    blocking = [q for q in questions if q.action]
    if blocking:
        first = min(blocking, key=lambda q: PRIORITY.index(q.action or ""))
        rec = Recommendation(first.action or "", None, [first.detail, *_GUIDE[first.action or ""]], first.next or "")
    else:
        ref = flags.base_model or (project.base_model if project else DEFAULT_MODEL)
        rec = fine_tune(project, flags, ref, n, kind, questions, facts, p)
    return Advice(str(project.root) if project else None, questions, rec, facts)


#: the guide's reason behind each action, quoted closely enough to recognise
_GUIDE: dict[str, list[str]] = {
    "write-the-task": ["the guide: if you cannot write down, in one sentence, exactly what behaviour the tuned model must "
                       "show that the base model does not, you are not ready to fine-tune"],
    "prompt": ["the guide: if the base model is already right more than 80 % of the time, fix the prompt or the "
               "pipeline; fine-tuning is for the gap between 'mostly works' and 'works reliably'"],
    "rag": ["the guide: if the model does not know facts it should know, you have a RAG problem, not a fine-tuning "
            "problem; fine-tuning is for behaviour, not knowledge (fine-tune on prompts that carry the retrieved facts "
            "only if the format is a problem too)"],
    "few-shot": ["the guide: fewer than 30 examples is not a dataset; fine-tuning on them overfits, and the eval looks "
                 "great until a real user sends a prompt that is not in the set"],
    "collect-data": ["the guide's table: below the minimum for the task kind a run learns the examples, not the task; "
                     "a stronger teacher model writing data you review is the highest-leverage way to get there"],
}


# --- the questions -----------------------------------------------------------------------------


def task_question(task: str | None, source: str, p: str | None) -> Question:
    init = f"tunesmith init {p or 'DIR'} --task \"Always answer with ...\""
    fix = f"write the task in {p}/tunesmith.yaml" if p else init
    if not task or not task.strip():
        return Question("task", None, "unknown", "no task sentence: say exactly what the tuned model must do",
                        "missing", init if not p else fix, "write-the-task")
    words = len(task.split())
    sentences = len(re.findall(r"[.!?](?:\s+[A-Z]|\s*$)", task.strip())) or 1
    vague = words < MIN_TASK_WORDS or (_VAGUE.search(task) is not None and _CONCRETE.search(task) is None)
    if vague:
        why = (f"{words} words" if words < MIN_TASK_WORDS else "says 'better', not what exactly")
        return Question("task", task, source, f"too vague to fine-tune for ({why}); name the exact output, "
                        "e.g. 'always answer with a JSON object with keys a, b, c'", "vague", fix, "write-the-task")
    note = f"; {sentences} sentences: the guide asks for one" if sentences > 1 else ""
    return Question("task", task, source, f"one concrete task ({words} words){note}", "ok")


def examples_question(n: int | None, kind: str, source: str, files: list[Path], project: Project | None,
                      p: str | None) -> Question:
    from tunesmith.data.checks.size import NOT_A_DATASET, SIZE_TABLE, size_verdict

    if kind not in SIZE_TABLE:
        raise UsageError(f"unknown task kind {kind!r}", f"use one of {', '.join(SIZE_TABLE)}")
    (lo, _), (c_lo, _) = SIZE_TABLE[kind]
    if not n:  # no data file, or not one usable row in it
        what = (f"no usable example in {', '.join(f.name for f in files)} (`tunesmith check` says why)" if files else
                f"no data yet: put your examples in {f'{p}/data.jsonl' if p else 'a project (`tunesmith init DIR`)'}")
        built = f"tunesmith build {p}" if project is not None and project.build and not files else None
        return Question("examples", n, "unknown" if n is None else source, f"{what}, or answer with --examples N",
                        "unknown", built or f"write {NOT_A_DATASET} or more examples, then `tunesmith advise"
                        f"{' -p ' + p if p else ''}`", "collect-data")
    verdict, sentence = size_verdict(n, kind)
    detail = sentence + (f" (counted in {', '.join(f.name for f in files)})" if source == "data" and files else "")
    teacher = (project.generate.teacher_model if project else None) or "TEACHER"
    grow = f"tunesmith generate -p {p or 'DIR'} --teacher-model {teacher} --n {max(c_lo - n, 1)}"
    if verdict == "not_a_dataset":
        return Question("examples", n, source, detail, "few-shot",
                        f"prompt it: put these {n} examples in the prompt as few-shot examples (to fine-tune later, "
                        f"grow them to {c_lo}: `{grow}`)", "few-shot")
    if verdict == "too_small":
        return Question("examples", n, source, detail, "collect-data",
                        f"{grow}  (from {n} to the comfortable {c_lo}; the minimum is {lo}), then review them: "
                        f"`tunesmith review {p or 'DIR'}/{project.generate.output if project else 'generated.jsonl'}`",
                        "collect-data")
    return Question("examples", n, source, detail, "enough")


@dataclass
class KnowledgeMeasure:
    share: float
    novel: int
    content: int
    examples: int


def knowledge_share(examples: Iterable[Example]) -> KnowledgeMeasure | None:
    """The share of answer content words and numbers that appear nowhere in the prompt.

    Answers that copy, reformat or classify their prompt score low; answers that carry facts the
    prompt lacks score high. Not counted: JSON keys, stop words, short numbers (counts and scores are
    derived, not looked up) and the answers' shared vocabulary (words in many answers: labels,
    enum values, boilerplate), which a model learns as behaviour.
    """
    rows = [(_tokens(ex.input_text()), _answer_tokens(ex.outputs())) for ex in examples]
    in_answers = Counter(t for _, answer in rows for t in set(answer))
    shared = {t for t, c in in_answers.items() if c >= max(3, 0.05 * len(rows))}
    novel = content = 0
    for prompt, answer in rows:
        kept = [t for t in answer if t not in shared]
        content += len(kept)
        novel += sum(t not in prompt for t in kept)
    # no content left at all (yes/no answers, labels only): nothing in the answers is knowledge
    return KnowledgeMeasure(novel / content if content else 0.0, novel, content, len(rows)) if rows else None


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _tokens(text: str) -> set[str]:
    return {_stem(t) for t in _TOKEN.findall(text.lower())}


def _answer_tokens(outputs: list[str]) -> list[str]:
    out: list[str] = []
    for text in outputs:
        try:
            values = _json_values(json.loads(text))  # keys are the format, not content
        except ValueError:
            values = [text]
        for t in _TOKEN.findall(" ".join(values).lower()):
            if (t.isdigit() and len(t) >= 3) or (not t.isdigit() and len(t) >= 3 and t not in _STOP):
                out.append(_stem(t))
    return out


def _json_values(value: Any) -> list[str]:
    if isinstance(value, (dict, list)):
        return [v for item in (value.values() if isinstance(value, dict) else value) for v in _json_values(item)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def knowledge_question(flag: bool | None, sample: list[Example], p: str | None) -> Question:
    rerun = f"tunesmith advise{' -p ' + p if p else ''}"
    rag_next = (f"put the facts each answer needs into its prompt (retrieval, RAG), then `{rerun}` again; "
                f"if the answers follow from the prompt (a translation, free writing): `{rerun} --behaviour`")
    if flag is not None:
        said = "knowledge" if flag else "behaviour"
        return Question("knowledge", said, "flag", f"answered with --{said}",
                        "rag" if flag else "behaviour", rag_next if flag else None, "rag" if flag else None)
    measure = knowledge_share(sample) if sample else None
    if measure is None:
        return Question("knowledge", None, "unknown", "unanswered: no answers to measure; do the answers need facts "
                        "that are not in the prompt?", "unknown", f"{rerun} --knowledge (or --behaviour)")
    detail = (f"{measure.share:.0%} of the answers' content words and numbers ({measure.novel:,} of "
              f"{measure.content:,}, over {measure.examples:,} examples) appear nowhere in their prompts "
              f"(system + user turns); {KNOWLEDGE_SHARE:.0%} or more means the answers carry knowledge")
    if measure.share >= KNOWLEDGE_SHARE:
        return Question("knowledge", "knowledge", "data", detail, "rag", rag_next, "rag")
    return Question("knowledge", "behaviour", "data", detail, "behaviour")


def baseline_question(project: Project | None, flag: float | None, p: str | None) -> Question:
    from tunesmith.project import EvalSettings

    threshold = project.eval.baseline_threshold if project else EvalSettings.model_fields["baseline_threshold"].default
    run = f"tunesmith baseline -p {p}" if p else "tunesmith baseline -p DIR"
    if flag is not None:
        rate, reg, source, where = flag, None, "flag", "--base-pass-rate"
    else:
        found = _stored_baseline(project) if project else None
        if found is None:
            return _no_baseline(project, run, p)
        rate, reg, where = found
        source = "baseline"
    from tunesmith.evaluate.api import base_passes

    passes = base_passes(rate, reg, threshold)
    shown = "no exact-match score" if rate is None else f"{rate:.0%}"
    reg_text = f", regression suite {reg:.0%}" if reg is not None else ""
    if passes:
        return Question("baseline", rate, source, f"the base model answers {shown} of the test set correctly{reg_text} "
                        f"(>= {threshold:.0%}; {where})", "prompt",
                        f"prompt it: improve system_prompt in tunesmith.yaml and re-measure with `{run}`", "prompt")
    return Question("baseline", rate, source, f"the base model answers {shown} of the test set correctly{reg_text} "
                    f"(< {threshold:.0%}; {where}): fine-tuning is worth trying", "fine-tune")


def _no_baseline(project: Project | None, run: str, p: str | None) -> Question:
    from tunesmith.data.split import seal_path_for

    if project is None:
        return Question("baseline", None, "unknown", "not measured (no project); answer with --base-pass-rate",
                        "not-measured", f"tunesmith init DIR && tunesmith split -p DIR && {run}")
    train, test = project.path(project.data.train), project.path(project.data.test)
    split = bool(train and test and train.is_file() and test.is_file() and seal_path_for(test).is_file())
    if not split:
        return Question("baseline", None, "unknown", "not measured yet: no sealed train/test split to measure on",
                        "no-split", f"tunesmith split -p {p} && {run}")
    return Question("baseline", None, "unknown", f"not measured yet: run `{run}`", "not-measured", run)


def _eval_store(project: Project) -> Any:
    """The project's evaluation store (None when it has no runs directory): base and variant scores."""
    from tunesmith.evaluate.store import EvalStore

    return EvalStore(project.registry()) if project.path(project.train.runs_dir) is not None else None


def _stored_baseline(project: Project) -> tuple[float | None, float | None, str] | None:
    """(test pass rate, regression pass rate, where) of the newest base-model evaluation.

    The eval store comes first: `baseline`, `eval` and `run` all write the base model's scores there.
    `run`'s pipeline.json keeps the recommendation too (a runs directory moved away leaves only it).
    """
    store = _eval_store(project)
    test = store.latest("base", "test") if store else None
    if test is not None and store is not None:
        reg = store.latest("base", "regression")
        total = reg.summary.get("total") if reg else None
        reg_rate = reg.summary["passed"] / total if reg and total else None
        em = test.summary.get("exact_match") or {}
        n = em.get("n", len(test.items))
        return em.get("mean"), reg_rate, f"base evaluation of {test.created_at[:10]}, n={n}"
    state = project.root / ".tunesmith" / "pipeline.json"
    try:
        rec = json.loads(state.read_text(encoding="utf-8"))["baseline"]["recommendation"]
        return rec.get("base_pass_rate"), rec.get("base_regression_rate"), "tunesmith run's baseline stage"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def constrained_decoding_question(project: Project | None, p: str | None = None) -> Question:
    """Would constrained decoding alone meet the output contract? Read from the base model's stored
    constrained evaluation (`baseline` measures it, with `baseline.few_shot` examples shown): when that
    passes the bar, prompting plus constrained decoding is the advice, not fine-tuning."""
    run = f"tunesmith baseline -p {p}" if p else "tunesmith baseline -p DIR"
    contract = None
    if project is not None:
        out = project.output
        contract = "a JSON Schema" if out.json_schema else "a regex" if out.regex else "JSON" if out.json_output else None
    if contract is None:
        what = "no output contract" + (" (no project)" if project is None else " in tunesmith.yaml")
        return Question("constrained", None, "project" if project else "unknown",
                        f"{what}: nothing to constrain decoding to", "not-applicable")
    found = _stored_constrained(project)
    if found is None:
        return Question("constrained", None, "unknown", f"the contract is {contract}; the base model has not been "
                        f"measured constrained to it: run `{run}`", "not-measured", run)
    from tunesmith.evaluate.api import base_passes

    rate, where = found
    threshold = project.eval.baseline_threshold
    shown = "no exact-match score" if rate is None else f"{rate:.0%}"
    if base_passes(rate, None, threshold):
        return Question("constrained", rate, "baseline", f"constrained to {contract}, the base model answers {shown} "
                        f"of the test set correctly (>= {threshold:.0%}; {where})", "prompt",
                        "prompt it and decode under the contract: response_format in `tunesmith serve`", "prompt")
    return Question("constrained", rate, "baseline", f"constrained to {contract}, the base model answers {shown} of "
                    f"the test set correctly (< {threshold:.0%}; {where}): the contract alone is not enough", "fine-tune")


def _stored_constrained(project: Project) -> tuple[float | None, str] | None:
    """(test pass rate, where) of the newest constrained base-model evaluation (with the project's few-shot)."""
    from tunesmith.evaluate.constrained import variant_name

    store = _eval_store(project)
    k = project.baseline.few_shot
    test = store.latest(variant_name("base", True, k), "test") if store is not None else None
    if test is None:
        return None
    em = test.summary.get("exact_match") or {}
    shots = f", {k} few-shot examples" if k else ""
    return em.get("mean"), f"constrained base evaluation of {test.created_at[:10]}{shots}, n={em.get('n', len(test.items))}"


# --- the data ------------------------------------------------------------------------------------


def _examples(project: Project | None, flags: AdviseFlags) -> tuple[int | None, list[Example], list[Path]]:
    """(usable rows, a sample for the knowledge measurement, the files read): data.source, else train +
    test; rows with problems (check's structural errors) cannot be trained on, so they do not count."""
    from tunesmith.data.formats import iter_examples

    if project is None:
        return flags.examples, [], []
    source = project.path(project.data.source)
    files = [source] if source is not None and source.is_file() else [
        f for f in (project.path(project.data.train), project.path(project.data.test)) if f is not None and f.is_file()]
    n, sample = 0, []
    for f in files:
        for ex in iter_examples(f):
            if not ex.problems:
                n += 1
                if len(sample) < KNOWLEDGE_SAMPLE:
                    sample.append(ex)
    if flags.examples is not None:
        return flags.examples, sample, files
    return (n if files else None), sample, files


# --- the method --------------------------------------------------------------------------------


def fine_tune(project: Project | None, flags: AdviseFlags, ref: str, n: int | None, kind: str,
              questions: list[Question], facts: dict[str, Any], p: str | None) -> Recommendation:
    why = [f"{q.id}: {q.detail}" for q in questions if q.verdict in ("ok", "enough", "behaviour", "fine-tune")]
    baseline = next(q for q in questions if q.id == "baseline")
    pp = p or "DIR"
    if project is not None and project.hosted.model:
        method, reasons = "hosted", [f"hosted.model is {project.hosted.model} in tunesmith.yaml", _HOSTED_WHY]
        train = f"tunesmith train -p {pp} --backend openai --model {project.hosted.model}"
    else:
        method, reasons = choose_method(ref, flags.params, n, kind, facts, project.train.method if project else None)
        train = (f"tunesmith train -p {pp} --backend openai --model {DEFAULT_MODEL}" if method == "hosted"
                 else f"tunesmith train -p {pp} --dry-run" + (f" --method {method}" if method == "full" else ""))
    first = baseline.next if baseline.verdict in ("not-measured", "no-split") else None
    nxt = f"{first}  (then, if the base model stays under the threshold: `{train}`)" if first else train
    return Recommendation("fine-tune", method, why + reasons, nxt)


_HOSTED_WHY = ("the guide: the hosted route wins on engineering time; you cannot inspect the weights, merge "
               "adapters or serve on your own hardware")


def choose_method(ref: str, params: int | None, n: int | None, kind: str, facts: dict[str, Any],
                  configured: str | None = None) -> tuple[str, list[str]]:
    """LoRA by default; QLoRA by the plan's rule; full only for a large dataset on a small model with
    memory for its optimizer state; hosted when nothing local fits."""
    from tunesmith.data.checks.size import size_verdict
    from tunesmith.train.device import detect_device, qlora_blocker  # torch: only when a method is advised

    size_from = "--params"
    if params is None:
        params, size_from = model_params(ref)
    dev = detect_device()
    memory = dev.memory_gb if dev.kind == "cuda" else ram_gb()
    facts.update(base_model=ref, params=params, params_from=size_from, device=dev.describe(), memory_gb=memory)
    size = f"{ref}: {fmt_params(params)} parameters ({size_from})" if params else f"{ref}: size unknown ({size_from})"
    kind_of = "GPU memory" if dev.kind == "cuda" else "RAM"
    where = f"{dev.kind} with {memory:.0f} GB {kind_of}" if memory else dev.describe()
    if configured is not None:
        if configured == "qlora" and (blocked := qlora_blocker(dev.kind)) is not None:
            return "lora", [f"train.method: qlora in tunesmith.yaml, but {blocked} ({where}): the plan refuses it; "
                            "use method: lora"]
        return configured, [f"train.method: {configured} in tunesmith.yaml"]
    if params is None or memory is None:
        return "lora", [f"{size}; memory {'unknown' if memory is None else where}: LoRA, the default; "
                        "`tunesmith train --dry-run` decides QLoRA once it sees the model"]
    gb16, gb4 = params * 2 / 2**30, params * 0.5 / 2**30
    if dev.kind == "cuda":
        from tunesmith.train.plan import needs_qlora

        if needs_qlora(dev, params):  # the training plan's own rule
            if gb4 > HEADROOM * memory:
                return "hosted", [f"{size}; {where}: even 4-bit weights ({gb4:.0f} GB) need more than half of it",
                                  _HOSTED_WHY]
            return "qlora", [f"{size}; {where}: 16-bit weights would not fit in GPU memory ({gb16:.0f} GB; the "
                             "plan's rule): QLoRA, 4-bit base weights",
                             "the guide: QLoRA is slightly below LoRA, adequate for most tasks"]
        big_data = n is not None and size_verdict(n, kind)[0] == "large"
        if big_data and params <= FULL_MAX_PARAMS and params * FULL_BYTES_PER_PARAM / 2**30 <= HEADROOM * memory:
            return "full", [f"{size}; {where}: weights, gradients and optimizer state fit, and {n} examples are "
                            f"above the comfortable range for a {kind} task", "the guide: full fine-tuning has the "
                            "highest ceiling, but pays off only when every token of quality matters at scale"]
        return "lora", [f"{size}; {where}: 16-bit weights fit ({gb16:.1f} GB): LoRA, adapter-only, close to full quality",
                        "the guide: the gap to full fine-tuning is smaller than the gap a cleaner dataset makes"]
    need = params * (4 if dev.kind == "cpu" else 2) / 2**30  # CPU trains fp32 weights; MPS 16-bit
    if dev.kind == "cpu" and params > CPU_MAX_PARAMS:
        return "hosted", [f"{size}; no CUDA GPU ({where}): above {CPU_MAX_PARAMS / 1e9:.0f}B parameters a CPU run "
                          "takes days", _HOSTED_WHY + "; or pick a smaller base_model"]
    if need > HEADROOM * memory:
        blocked = qlora_blocker(dev.kind)
        if blocked is None and gb4 <= HEADROOM * memory:
            return "qlora", [f"{size}; {where}: the weights ({need:.1f} GB) need more than half the memory: QLoRA, "
                             f"4-bit base weights ({gb4:.1f} GB; bitsandbytes on {dev.kind})",
                             "the guide: QLoRA is slightly below LoRA, adequate for most tasks"]
        why = blocked or f"even 4-bit weights ({gb4:.1f} GB) need more than half of it"
        return "hosted", [f"{size}; no CUDA GPU ({where}): the weights ({need:.0f} GB) need more than half the "
                          f"memory, and QLoRA cannot help: {why}", _HOSTED_WHY + "; or pick a smaller base_model"]
    return "lora", [f"{size}; {where}: LoRA fits ({need:.1f} GB of weights)",
                    "the guide: LoRA trains an adapter only (~10-200 MB), very close to full quality"]
