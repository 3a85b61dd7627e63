"""tunesmith.yaml: the one project file, its schema, and the single place defaults < file < flags meet.

Everything a run needs to reproduce itself is in the resolved `Project`; it is written into every run
directory. Paths in the file are relative to the project directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import ProjectError, UsageError
from tunesmith.json_numbers import huge_number
from tunesmith.paths import link_hint, symlink_problem
from tunesmith.project_yaml import read_project_yaml
from tunesmith.runs import RunRegistry
from tunesmith.units import parse_duration

PROJECT_FILE = "tunesmith.yaml"
DEFAULT_MODEL = "builtin:smollm2-135m-instruct"

TaskKind = Literal["format", "style", "domain", "multistep"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def output_pattern(regex: str) -> re.Pattern[str]:
    """The contract's regex as `check`, eval and regression apply it: a full match, `.` across lines."""
    try:
        return re.compile(regex, re.DOTALL)
    except re.error as exc:
        raise UsageError(
            f"output regex {regex!r} is not a valid regular expression: {exc}",
            "fix the pattern (--regex, or output.regex in tunesmith.yaml); a literal ( [ { . * + ? | \\ needs a backslash",
        ) from None


class OutputContract(_Strict):
    """What every assistant output must look like: a JSON Schema, a regex, plain JSON, or nothing."""

    json_schema: str | None = Field(None, description="Path to a JSON Schema file every output must validate against.")
    regex: str | None = Field(None, description="Python regex every output must match in full.")
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    json_output: bool = Field(False, alias="json", description="Outputs must be JSON (implied by json_schema).")

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> OutputContract:
        if self.json_schema and self.regex:
            raise ValueError("give json_schema or regex, not both")
        return self

    @property
    def expects_json(self) -> bool:
        return self.json_output or self.json_schema is not None


#: data.test_fraction and `split --test-fraction` alike
TEST_FRACTION_MIN, TEST_FRACTION_MAX = 0.05, 0.5


class DataPaths(_Strict):
    source: str = Field("data.jsonl", description="All examples, before the split.")
    train: str = Field("data/train.jsonl", description="Training split, written by `tunesmith split`.")
    test: str = Field("data/test.jsonl", description="Sealed test split, written by `tunesmith split`; never look at it.")
    test_fraction: float = Field(0.15, ge=TEST_FRACTION_MIN, le=TEST_FRACTION_MAX,
                                 description="Share of examples sealed away for testing (10-20 % is usual).")
    regression: str | None = Field(
        None, description="Regression suite: 20-50 prompts with assertions, checked after every run.")

    @model_validator(mode="after")
    def _one_file_per_role(self) -> DataPaths:
        # `split` writes train and test from source: a shared path means one silently overwrites the
        # other (the seal then vouches for training rows), and a regression suite is no data file.
        roles = {"source": self.source, "train": self.train, "test": self.test, "regression": self.regression}
        seen: dict[Path, str] = {}
        for role, rel in roles.items():
            if rel is None:
                continue
            key = Path(rel)  # normalises "./a" and "a//b"; both are relative to the same project root
            if key in seen:
                raise ValueError(f"data.{seen[key]} and data.{role} are the same file ({rel}); "
                                 "give each its own path")
            seen[key] = role
        return self


class CheckSettings(_Strict):
    near_duplicate_threshold: float = Field(
        0.8, gt=0.3, le=1.0,
        description="Rows at least this similar are near duplicates (Jaccard similarity over character 5-grams).")


class MixSettings(_Strict):
    """Forgetting guard: mix general examples into training (the guide's "data mixing")."""

    source: str = Field(..., description="A JSONL file of general examples, or `self` (the base model answers shipped general prompts).")
    fraction: float = Field(0.05, ge=0.01, le=0.3, description="Mixed examples as a share of the training set (0.05-0.10 is typical).")


class TrainSettings(_Strict):
    """Every value is optional: unset ones are planned from the data (and the plan says why)."""

    method: Literal["lora", "qlora", "full"] | None = Field(
        None, description="LoRA adapters, QLoRA (LoRA on a 4-bit NF4 base; bitsandbytes: CUDA, or CPU from 0.50) or every weight.")
    rank: int | None = Field(None, ge=1, le=1024, description="LoRA rank: the size of the adapters.")
    alpha: float | None = Field(None, gt=0, description="LoRA scaling factor.")
    dropout: float | None = Field(None, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | None = Field(None, description="Names of the modules LoRA adapts (planned: every linear layer).")
    layers: int | Literal["all"] | None = Field(
        None, description="LoRA on the top N decoder layers only (backpropagation stops below them), or all.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Peak learning rate.")
    converge: bool | None = Field(
        None, description="Stop once validation loss and answer match stop improving; epochs stay the ceiling "
                          "(planned: on when there is a validation slice).")
    epochs: float | None = Field(None, gt=0, le=100, description="Passes over the training data.")
    batch_size: int | None = Field(None, ge=1, le=1024, description="Examples per device per step.")
    effective_batch: int | None = Field(None, ge=1, le=4096, description="Examples per optimizer step.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Share of the steps that warm the learning rate up.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] | None = Field(
        None, description="Learning-rate schedule after warmup.")
    eval_fraction: float | None = Field(None, gt=0, le=0.5, description="Share of train held out for validation loss.")
    eval_every: int | None = Field(None, ge=1, description="Optimizer steps between evaluations and checkpoints.")
    patience: int | None = Field(None, ge=1, le=100, description="Evaluations of rising eval loss before stopping.")
    time_budget: float | None = Field(
        None, description="Longest training time: 10m, 90s, 1h30m, 2.5m or seconds; epochs are cut to fit it.",
        # the file may say "10m": editors must not flag what the loader accepts
        json_schema_extra={"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}, {"type": "null"}]})
    precision: Literal["auto", "bf16", "fp16", "fp32"] | None = Field(
        None, description="Training precision; auto: bf16 where this machine is fast at it, else fp32.")
    seed: int | None = Field(None, description="Random seed for initialisation and data order.")
    mix: MixSettings | None = Field(None, description="Forgetting guard: mix general examples into training.")
    report_to: list[str] | Literal["all", "none"] = Field(
        default_factory=list, description="Extra trackers, by transformers' names: wandb, mlflow, trackio, comet_ml, ...; "
                                          "all (every installed one) or none (TensorBoard is always on).")
    chat_template: str | None = Field(
        None, description="A Jinja chat template, or a file holding one, for a base model without its own; "
                          "saved with the run, which evaluates and serves with it.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Other transformers TrainingArguments fields, passed through: "
                                          "{weight_decay: 0.01, max_grad_norm: 0.5}.")
    accelerate_config: str | None = Field(
        None, description="An `accelerate config` file: train through `accelerate launch` with it (FSDP, DeepSpeed, "
                          "several machines).")
    runs_dir: str = Field("runs", description="Where run directories and the registry live.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        from tunesmith.train_arguments import check_report_to

        # transformers takes one name as a string too; every name is checked against its own list
        return check_report_to(v) if isinstance(v, (str, list)) and all(isinstance(n, str) for n in v) else v

    @field_validator("extra")
    @classmethod
    def _training_arguments(cls, v: dict[str, Any]) -> dict[str, Any]:
        from tunesmith.train_arguments import check_extra

        return check_extra(v)

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)  # seconds; a ValueError names the accepted forms


class JudgeSettings(_Strict):
    """An LLM judge behind any OpenAI-compatible endpoint (a stronger model than the one judged)."""

    base_url: str = Field(..., description="The judge's OpenAI-compatible base URL: https://api.openai.com/v1 or a local server.")
    model: str = Field(..., description="The judge model's name at that endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    concurrency: int = Field(4, ge=1, le=64, description="Judge requests in flight at once.")
    pairwise: bool = Field(True, description="Also judge base vs tuned side by side, both orders.")


class EvalSettings(_Strict):
    max_new_tokens: int | None = Field(
        None, ge=1, le=32768,
        description="Longest answer generated per prompt (default: 1.25 x the longest training answer + 16 tokens).")
    batch_size: int | None = Field(None, ge=1, le=512, description="Local generation batch (default: from memory).")
    baseline_threshold: float = Field(0.8, gt=0, le=1, description="Base model pass rate at which fine-tuning is not advised.")
    max_new_failures: int = Field(0, ge=0, description="Regression prompts a run may newly fail before the gate fails.")
    scorers: list[str] = Field(default_factory=list, description="User scorers: module:function or file.py:function.")
    judge: JudgeSettings | None = Field(None, description="An LLM judge for the criteria code cannot check (none when unset).")
    spotcheck_n: int = Field(20, ge=2, le=500, description="Answers on the blind spot-check page (`tunesmith spotcheck`).")
    constrained: bool = Field(
        False, description="Also evaluate base and tuned constrained to the output contract (eval --constrained).")


class BaselineSettings(_Strict):
    """`tunesmith baseline` (and `run`'s baseline stage): the guide's "try prompting before fine-tuning"."""

    constrained: bool = Field(
        True, description="Also try the base model constrained to the output contract (when the project has one).")
    few_shot: int = Field(0, ge=0, le=20,
                          description="Show the base model this many training examples first (0: none).")
    full: bool = Field(
        False, description="Answer the whole test set and regression suite instead of stopping once the pass "
                           "rate's interval clears the bar (--full).")


class Price(_Strict):
    """US dollars per million tokens, as the provider bills them."""

    input: float = Field(..., ge=0, description="Price per 1M prompt (input) tokens.")
    output: float = Field(..., ge=0, description="Price per 1M completion (output) tokens.")


class GenerateSettings(_Strict):
    """`tunesmith generate`: a stronger teacher model writes inputs and answers them (distillation)."""

    teacher_model: str | None = Field(None, description="The teacher's model name at the endpoint (--teacher-model).")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (default: OPENAI_BASE_URL, else OpenAI).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    n: int = Field(100, ge=1, le=100_000, description="Examples to generate (--n).")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature for writing inputs (answers use answer_temperature).")
    answer_temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature for the teacher's answers.")
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per answer; each retry shows the teacher why its answer broke the contract.")
    max_tokens: int | None = Field(None, ge=16, le=131072, description="Longest teacher reply in tokens (default: from the seed answers, at least 1024).")
    timeout: float = Field(120, gt=0, le=3600, description="Seconds per request before it is retried.")
    fewshot: int = Field(3, ge=0, le=20, description="Seed examples shown to the teacher before each input it answers.")
    seed: int = Field(0, description="Which seeds each request shows and the order of the plan: same seed, same requests.")
    output: str = Field("generated.jsonl", description="Where generated rows go (never data.source).")
    price: Price | None = Field(
        None, description="US$ per 1M tokens for the teacher model, when the dated price table is out of date.")


class HostedPrice(_Strict):
    """US dollars per million tokens for hosted fine-tuning, as the provider bills them."""

    training: float = Field(..., ge=0, description="Per 1M training tokens (tokens in the file x epochs).")
    input: float | None = Field(None, ge=0, description="Per 1M prompt tokens sent to the fine-tuned model.")
    output: float | None = Field(None, ge=0, description="Per 1M completion tokens from the fine-tuned model.")


class HostedSettings(_Strict):
    """`tunesmith train --backend openai`: fine-tuning on a provider's API instead of this machine."""

    backend: Literal["openai"] = Field("openai", description="The hosted fine-tuning API.")
    model: str | None = Field(None, description="The provider's base model to fine-tune (--model).")
    suffix: str | None = Field(None, max_length=64, description="Added to the fine-tuned model's name (--suffix).")
    base_url: str | None = Field(None, description="API base URL (default: OPENAI_BASE_URL, else OpenAI).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    n_epochs: int | Literal["auto"] | None = Field(None, description="Epochs (default: the plan's, or auto).")
    batch_size: int | Literal["auto"] | None = Field(None, description="Examples per step (default: auto).")
    learning_rate_multiplier: float | Literal["auto"] | None = Field(
        None, description="Scales the provider's default learning rate (unset: auto).")
    validation_fraction: float = Field(0.1, ge=0, le=0.5, description="Share of train uploaded as the validation file.")
    poll_seconds: float = Field(15, ge=0.01, le=600, description="First wait between status checks (grows to 4x).")
    price: HostedPrice | None = Field(
        None, description="US$ per 1M tokens for the model, when the dated price table is out of date.")


class Project(_Strict):
    task: str = Field(..., min_length=10, description=(
        "One sentence: exactly what the tuned model must do that the base model does not; not \"better answers\" "
        "but \"always reply with one JSON object with keys a, b, c\"."))
    task_kind: TaskKind = Field(
        "format", description="Sets the minimum dataset size `check` expects; format needs the fewest examples, multistep the most.")
    base_model: str = Field(
        DEFAULT_MODEL, description="builtin:NAME (embedded, offline), a .gguf file, a checkpoint directory or a hub id.")
    system_prompt: str | None = Field(
        None, description="Used for training, evaluation and serving alike; leave it out if you serve without one.")
    output: OutputContract = Field(default_factory=OutputContract, description=(
        "The output contract every assistant turn must meet: json_schema (a file), regex, or json: true."))
    data: DataPaths = Field(default_factory=DataPaths, description="The examples and their splits.")
    max_length: int | None = Field(
        None, ge=16, le=131072,
        description="Longest example in tokens under the base model's chat template; longer ones are flagged.")
    build: str | None = Field(None, description="Command that builds data.source when it is missing.")
    checks: CheckSettings = Field(default_factory=CheckSettings, description="`tunesmith check`'s thresholds.")
    train: TrainSettings = Field(default_factory=TrainSettings, description=(
        "`tunesmith train`: every value is optional; unset ones are planned from the data (and the plan says why)."))
    eval: EvalSettings = Field(default_factory=EvalSettings, description="`tunesmith eval`: generation, gates and the judge.")
    baseline: BaselineSettings = Field(default_factory=BaselineSettings, description=(
        "`tunesmith baseline`: try prompting the base model before fine-tuning; when that already passes, "
        "it says not to fine-tune."))
    generate: GenerateSettings = Field(default_factory=GenerateSettings, description=(
        "`tunesmith generate`: a stronger teacher model writes more examples from your seeds (distillation)."))
    hosted: HostedSettings = Field(default_factory=HostedSettings, description=(
        "`tunesmith train --backend openai`: fine-tuning on a provider's API instead of this machine."))

    # Not part of the file: where it was loaded from, so relative paths resolve.
    root: Path = Field(default=Path("."), exclude=True)

    def path(self, rel: str | None) -> Path | None:
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def registry(self) -> RunRegistry:
        """The project's runs: where `train.runs_dir` says (every command reaches them through here)."""
        return RunRegistry(self.root / self.train.runs_dir)

    def load_schema(self) -> dict | None:
        """The contract's JSON Schema, parsed and checked, or None."""
        return load_json_schema(self.path(self.output.json_schema)) if self.output.json_schema else None

    def resolved(self) -> dict[str, Any]:
        """The resolved configuration as plain data (what a run directory records)."""
        data = self.model_dump(mode="json", by_alias=True)
        data["root"] = str(self.root.resolve())
        return data


def load_json_schema(path: Path | None) -> dict | None:
    if path is None:
        return None
    if not path.is_file():
        link = symlink_problem(path)
        raise ProjectError(f"output.json_schema: {link or f'{path} does not exist'}",
                           link_hint(path) if link else "build the project data or fix the path")
    try:
        text = path.read_text(encoding="utf-8")
        schema = json.loads(text)
    except OSError as exc:
        raise ProjectError(f"{path}: cannot be read ({exc.strerror})", "check the file's permissions") from None
    except json.JSONDecodeError as exc:
        raise ProjectError(f"{path}: not valid JSON ({exc})", "fix the schema file") from None
    except UnicodeDecodeError as exc:
        raise ProjectError(f"{path}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})",
                           "fix the schema file") from None
    except ValueError:  # int() refusing a number over sys.get_int_max_str_digits()
        raise ProjectError(f"{path}: not valid JSON ({huge_number(text, 'no schema needs one that long')})",
                           "fix the schema file") from None
    except RecursionError:
        raise ProjectError(f"{path}: not valid JSON (nested too deeply to read)", "fix the schema file") from None
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ProjectError(f"{path}: not a valid JSON Schema: {exc.message}", "see https://json-schema.org") from None
    return schema


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            return  # the file's own error will be reported by validation
    node[last] = value


def find_project_dir(start: Path) -> Path | None:
    """The directory holding tunesmith.yaml: `start` itself or one of its two parents."""
    start = start if start.is_dir() else start.parent
    try:
        parents = list(start.resolve().parents)[:2]
    except (OSError, RuntimeError):  # a symlink loop on the way: its own reader says so
        parents = []
    for d in (start, *parents):
        if (d / PROJECT_FILE).is_file():
            return d
    return None


def _model_in_project(ref: str, root: Path) -> str:
    """A relative model path in tunesmith.yaml is relative to the project, like every other path in
    it; a hub id ("org/name") stays one unless the project holds a directory of that name."""
    if ":" in ref.split("/", 1)[0]:
        return ref  # builtin:NAME or a URL-like scheme
    if "\0" in ref:
        raise ProjectError(f"base_model: {ref!r} holds a NUL byte", "write the model's path, hub id or builtin:NAME")
    try:
        expanded = Path(ref).expanduser()
    except RuntimeError:  # ~name for a user this machine does not have
        user = ref[1:].split("/", 1)[0]
        raise ProjectError(f"base_model: {ref}: no user {user} to expand ~ for",
                           "write the full path, or a path relative to the project") from None
    if expanded.is_absolute():
        return str(expanded)
    local = root / ref
    link = symlink_problem(local)
    if link is not None:
        raise ProjectError(f"base_model: {link}", link_hint(local))
    if ref.startswith(("./", "../", ".\\", "..\\")) or local.exists():
        return str(local.resolve())
    return ref


def load_project(directory: str | Path, overrides: dict[str, Any] | None = None) -> Project:
    """Load DIR/tunesmith.yaml, apply dotted-key overrides (CLI flags), validate everything at once."""
    d = Path(directory)
    file = d / PROJECT_FILE if d.is_dir() or not d.suffix else d
    if file.suffix.lower() not in (".yaml", ".yml"):
        raise ProjectError(f"{file} is not a project file: --project takes the project's directory (or its "
                           f"{PROJECT_FILE})", "pass the directory with -p; data files go in as arguments")
    if not file.is_file():
        for path in (d, file):
            link = symlink_problem(path)
            if link is not None:
                raise ProjectError(link, link_hint(path))
        raise ProjectError(f"{file}: no project file", f"create one with `tunesmith init {d}`")
    raw = read_project_yaml(file)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProjectError(f"{file}: expected a mapping of fields, got a {type(raw).__name__}", "see `tunesmith init`")
    for section in ("output", "data", "checks", "train", "eval", "baseline", "generate", "hosted"):
        if section in raw and raw[section] is None:  # "output:" with every key commented out
            del raw[section]
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        project = Project.model_validate({**raw, "root": file.parent})
    except ValidationError as exc:
        details = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ProjectError(
            f"{file}: {len(details)} problem(s) in the project file",
            "fix the fields named above; `tunesmith init` writes a commented example",
            details=details,
        ) from None
    project.base_model = _model_in_project(project.base_model, project.root)
    problems = []
    schema_path = project.path(project.output.json_schema)
    if schema_path is not None and not schema_path.is_file() and not project.build:
        problems.append(f"output.json_schema: {schema_path} does not exist")
    if problems:
        raise ProjectError(f"{file}: {len(problems)} problem(s) in the project file", "fix the paths named above", details=problems)
    return project


def build_data(project: Project, *, force: bool = False) -> bool:
    """Run the project's `build` command when data.source is missing (or when forced).

    Returns True when it ran. `python` at the start of the command means this interpreter, so a
    project builds with the same environment tunesmith runs in.
    """
    import shlex
    import subprocess
    import sys

    source = project.path(project.data.source)
    if source is not None and source.exists() and not force:
        return False
    if not project.build:
        raise ProjectError(
            f"{source}: the project's data does not exist",
            "create it, or add a `build:` command to tunesmith.yaml that makes it",
        )
    argv = shlex.split(project.build)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    proc = subprocess.run(argv, cwd=project.root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ProjectError(
            f"build command {project.build!r} failed with exit status {proc.returncode}",
            "run it by hand in the project directory to see the whole output",
            details=tail,
        )
    if source is not None and not source.exists():
        raise ProjectError(f"build command {project.build!r} ran but did not create {source}",
                           "make the build write data.source")
    return True
