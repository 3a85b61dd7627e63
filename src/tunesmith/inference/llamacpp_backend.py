"""`LlamaCppBackend`: a GGUF file answering through llama.cpp (``llama-cpp-python``), where it is installed.

What a CPU user ships is a GGUF file, so that is what this backend evaluates: a run's export (LoRA merged in
the file), the base model's export plus the run's ``lora-gguf`` adapter (`eval --gguf-adapter`), the base
model's export, or the builtin model's own Q4_1 file. Prompts are rendered to token ids with the run's
tokenizer and chat template (`tunesmith.models.chat.prompt_ids`, as every backend does) and fed to
llama.cpp as tokens, so its own template handling never enters. Each answer goes through the engine's `Row`: the same end-of-turn ids,
stop strings, token limit and contract watch as the transformers engine, decoded with the same tokenizer.
Greedy is temperature 0 (llama.cpp's greedy sampler); otherwise temperature + top-p, no top-k, min-p or
repetition penalty, as `DecodeSettings` means them.

A constrained answer (`eval --constrained`, `baseline`'s constrained pass, a server's ``response_format``)
is decoded under tunesmith's own grammar engine (`inference.grammar`), not llama.cpp's GBNF: each step
feeds one token to llama.cpp, masks its logits with the row's grammar state (and steers a row at the end of
its budget to close, `inference.closing`), and picks the token as the transformers engine does. So a
constraint means the same thing on either engine, and a schema the grammar engine cannot enforce is
refused the same way.

`LlamaCppEngine` puts one such model behind `tunesmith serve --engine llamacpp` (one model per server).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError, TunesmithError, UsageError, one_line
from tunesmith.inference.backends import Chat, OnResult, Progress, Results, check_settings, file_sha256, sha256_of
from tunesmith.inference.types import DecodeSettings, Generation

ENGINES = ("transformers", "llamacpp")
#: how to get llama-cpp-python: it ships as source only and compiles llama.cpp (~12 minutes on 2 cores)
LLAMACPP_HINT = ("build it once with `make test-llamacpp`, or pip install 'tunesmith[llamacpp]' "
                 "(it compiles llama.cpp: about 12 minutes on 2 cores)")
#: the quantisations `--quant` takes with --engine llamacpp: the exporter's, and the builtin model's own file
ENGINE_QUANTS = ("f32", "bf16", "f16", "q8_0", "q5_0", "q4_0", "q4_1")
#: context sizes are rounded up to this, so one loaded model serves many evaluations
_CTX_STEP = 256
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "chat_template.jinja", "chat_template.json", "tokenizer.model")


def llamacpp_available() -> bool:
    """Whether `llama_cpp` can be imported here (it is an optional extra)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # sys.modules["llama_cpp"] = None reads as absent too
        return False


def require_llamacpp(what: str = "--engine llamacpp") -> Any:
    """The `llama_cpp` module, or a ModelError that says how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"{what} needs llama-cpp-python (the `llama_cpp` module), which is not installed",
                         LLAMACPP_HINT + "; or use --engine transformers") from None
    return llama_cpp


def check_engine(engine: str, quant: str | None, gguf_adapter: bool = False) -> None:
    """UsageError for an unknown engine, or a --quant the engine does not have: int8 is the transformers
    engine's (`inference.int8`), every other quant a GGUF type for --engine llamacpp."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not an evaluation engine",
                         "use --engine transformers (default) or --engine llamacpp (the GGUF export)")
    if gguf_adapter and engine != "llamacpp":
        raise UsageError("--gguf-adapter only applies with --engine llamacpp",
                         "add --engine llamacpp, or leave out --gguf-adapter")
    if quant == "int8":
        if engine != "transformers":
            raise UsageError("--quant int8 is the transformers engine's weight-only int8, not a GGUF type",
                             "use --quant q8_0 with --engine llamacpp, or leave --engine out for int8")
        return
    if quant is not None and engine != "llamacpp":
        raise UsageError(f"--quant {quant} only applies with --engine llamacpp",
                         "add --engine llamacpp, or use --quant int8 (the transformers engine's weight-only int8)")
    if quant is not None and quant not in ENGINE_QUANTS:
        raise UsageError(f"--quant {quant!r} is not a GGUF type this engine evaluates",
                         "use f16 (default, exact), bf16, f32, q8_0, q5_0, q4_0, or q4_1 for the builtin "
                         "model's own file (base only)")


def default_threads() -> int:
    """CPU threads for llama.cpp: the cores this process may use, at most torch's thread setting
    (OMP_NUM_THREADS / taskset), so both engines get the same share of a shared machine."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, torch.get_num_threads()))


def repacks_weights() -> bool:
    """Whether llama.cpp may repack weights into its CPU-specific "extra buffer types" (AMX tiles,
    interleaved q4_0/q8_0 blocks) when it loads a file.

    On CPUs with AMX, llama-cpp-python 0.3.36 built with its default native flags dies with SIGSEGV in
    `llama_decode` on every quantised file (q8_0, q4_0, the builtin model's own Q4_1) when the AMX buffer
    type holds the weights; without the extra buffer types the same files load and answer (measured on a
    Sapphire Rapids VM: Q4_1 at 52 tokens/s). So they are off where the CPU reports AMX and on elsewhere,
    where the repacked kernels are the fast path (and where no flags can be read: no crash was seen off
Linux). ``TUNESMITH_LLAMACPP_REPACK=1`` / ``=0`` overrides, spelled as ``TUNESMITH_CPU_BF16`` is.
    """
    from tunesmith.cpu import cpu_flags

    forced = os.environ.get("TUNESMITH_LLAMACPP_REPACK", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return "amx_tile" not in cpu_flags()


_PARAMS_LOCK = threading.Lock()


def _load_llama(llama_cpp: Any, kwargs: dict[str, Any], *, repack: bool) -> Any:
    """`llama_cpp.Llama(**kwargs)` with `use_extra_bufts` = `repack`: the high-level class takes no such
    argument and reads its model parameters from `llama_model_default_params()`, so that is wrapped while
    it loads (under a lock: the function is module-global)."""
    import llama_cpp.llama as high_level

    low = high_level.llama_cpp
    with _PARAMS_LOCK:
        defaults = low.llama_model_default_params

        def params() -> Any:
            p = defaults()
            p.use_extra_bufts = repack
            return p

        low.llama_model_default_params = params
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            low.llama_model_default_params = defaults


def gguf_sha256(path: Path) -> str:
    """The file's sha256 from its export record (`<file>.json`) when the record is of this file (same
    size, written after it: a re-export interrupted between the file and its record leaves an older
    record of a same-sized file), else hashed now."""
    record = path.with_name(path.name + ".json")
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        written, made = path.stat(), record.stat()
        if data.get("sha256") and data.get("size_bytes") == written.st_size and made.st_mtime_ns >= written.st_mtime_ns:
            return str(data["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    return file_sha256(path)


def _package_version() -> str:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "absent"


class LlamaCppBackend:
    """A GGUF file (+ an optional GGUF LoRA adapter) answering through llama.cpp, one prompt at a time.

    Nothing heavy happens in the constructor (a fully cached evaluation never loads the model): the
    fingerprint is "llamacpp", the quantisation, the file's sha256 (from its export record), the
    adapter's, the tokenizer and template files, and the llama-cpp-python version.
    """

    engine = "llamacpp"
    #: answers are cut once they break `DecodeSettings.contract` (the engine's `Row` watches them)
    honours_contract = True
    #: constrained answers are masked by tunesmith's grammar engine, step by step (see `constrained_answer`)
    honours_constraint = True

    def __init__(self, gguf_path: Path | str, tokenizer_dir: Path | str, *, quant: str,
                 lora_path: Path | str | None = None, n_threads: int | None = None) -> None:
        self.gguf_path = Path(gguf_path).expanduser().resolve()
        self.tokenizer_dir = Path(tokenizer_dir).expanduser().resolve()
        self.lora_path = Path(lora_path).expanduser().resolve() if lora_path is not None else None
        self.quant = quant
        for what, path in (("GGUF model", self.gguf_path), ("GGUF adapter", self.lora_path)):
            if path is not None and not path.is_file():
                raise ModelError(f"{what} not found: {path}",
                                 "export it first: tunesmith export RUN --format "
                                 + ("lora-gguf" if what == "GGUF adapter" else "gguf"))
        self.n_threads = n_threads or default_threads()
        self.repack = repacks_weights()
        self.sha256 = gguf_sha256(self.gguf_path)
        self.fingerprint = self._fingerprint()
        self._tokenizer: Any = None
        self._llm: Any = None
        self._n_ctx = 0
        self._lock = threading.Lock()
        self._grammar: Any = None
        self._bias: Any = None

    def _fingerprint(self) -> str:
        parts: list[str | bytes] = ["llamacpp", self.quant, self.sha256, _package_version()]
        if not self.repack:  # other kernels, maybe other sums: kept apart (and earlier keys stay valid)
            parts.append("no-repack")
        if self.lora_path is not None:
            parts += ["lora", gguf_sha256(self.lora_path)]
        for name in _TOKENIZER_FILES:
            f = self.tokenizer_dir / name
            if f.is_file():
                parts += [name, file_sha256(f)]
        return sha256_of(*parts)

    def describe(self) -> dict[str, Any]:
        """Which engine and file answered (stored with the evaluation, shown in the report)."""
        return {"engine": "llamacpp", "quant": self.quant, "file": str(self.gguf_path), "sha256": self.sha256,
                "lora": str(self.lora_path) if self.lora_path else None, "repack": self.repack}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tunesmith.models.resolve import tokenizer_in

            self._tokenizer = tokenizer_in(self.tokenizer_dir)
        return self._tokenizer

    def grammar(self, llm: Any) -> Any:
        """The grammar compiler for this tokenizer and the model's logits width (built on first use)."""
        if self._grammar is None:
            from tunesmith.inference.grammar import GrammarCompiler
            from tunesmith.models.chat import end_of_turn_ids

            self._grammar = GrammarCompiler(self.tokenizer, int(llm.n_vocab()), end_of_turn_ids(self.tokenizer))
        return self._grammar

    def closing_bias(self, llm: Any) -> Any:
        if self._bias is None:
            from tunesmith.inference.closing import ClosingBias
            from tunesmith.models.chat import end_of_turn_ids

            self._bias = ClosingBias(self.tokenizer, int(llm.n_vocab()), sorted(end_of_turn_ids(self.tokenizer)), "cpu")
        return self._bias

    def llama(self, n_ctx: int) -> Any:
        """The loaded `llama_cpp.Llama`, with room for `n_ctx` tokens (reloaded when it has less)."""
        with self._lock:
            if self._llm is None or self._n_ctx < n_ctx:
                llama_cpp = require_llamacpp()
                size = -(-max(n_ctx, 1) // _CTX_STEP) * _CTX_STEP
                self._llm = None  # free the smaller context first
                kwargs: dict[str, Any] = dict(model_path=str(self.gguf_path), n_ctx=size, n_batch=min(512, size),
                                              n_threads=self.n_threads, n_threads_batch=self.n_threads,
                                              seed=0, verbose=False)
                if self.lora_path is not None:
                    kwargs["lora_path"] = str(self.lora_path)
                try:
                    self._llm = _load_llama(llama_cpp, kwargs, repack=self.repack)
                except Exception as exc:  # noqa: BLE001 - llama.cpp says little more than "failed to load"
                    raise ModelError(f"llama.cpp cannot load {self.gguf_path}: {one_line(exc)}",
                                     "re-export it with this tunesmith (tunesmith export RUN --force), "
                                     "or use --engine transformers") from exc
                self._n_ctx = size
            return self._llm

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        from tunesmith.inference.rows import Sampling
        from tunesmith.models.chat import end_of_turn_ids, prompt_ids

        if not chats:
            return []
        check_settings(settings)
        prompts = prompt_ids(self.tokenizer, chats)
        from tunesmith.inference.local import CLOSE_WITHIN

        close_within = CLOSE_WITHIN if settings.constraint is not None else 0
        llm = self.llama(max(len(p) for p in prompts) + settings.max_new_tokens + close_within)
        contract = settings.contract if settings.contract is not None and settings.contract.active else None
        sampling = Sampling(max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, seed=settings.seed, stop=tuple(settings.stop), contract=contract,
                            constraint=settings.constraint, close_within=close_within)
        eot = end_of_turn_ids(self.tokenizer)
        collector = Results(len(chats), progress, on_result)
        for index, ids in enumerate(prompts):
            done = answer(self, llm, ids, sampling, eot)
            if done is None:  # the token stream ended before the row did (llama.cpp's context ran out)
                raise ModelError(f"llama.cpp stopped before answer {index + 1} ended ({len(ids)} prompt tokens, "
                                 f"context {llm.n_ctx()})", "lower max_new_tokens, or evaluate with --engine "
                                 "transformers")
            collector.finish(index, Generation(done.text, done.finish_reason, done.completion_tokens))
        return collector.complete()


def answer(backend: LlamaCppBackend, llm: Any, ids: list[int], sampling: Any, eot: set[int], job: Any = None) -> Any:
    """Decode one prompt to its end through the engine's `Row` (stops, limit, contract watch, streaming,
    and under `sampling.constraint` the backend's grammar); the `Finished` answer, or None when `job`
    was cancelled."""
    from tunesmith.inference.rows import SAMPLING_EPS, Finished, Job, Row

    tokenizer = backend.tokenizer
    finished: list[Finished] = []
    if job is None:
        job = Job(list(ids), None, sampling, lambda e: finished.append(e[1]) if e[0] == "done" else None,
                  stream=False)
    # a fresh context per prompt: llama.cpp's prefix reuse would make an answer depend on the prompt
    # before it (another batch shape in the prefill), and cached answers must not
    llm.reset()
    if sampling.constraint is not None:
        matcher = backend.grammar(llm).compile(sampling.constraint).matcher()
        row = Row(job, eot, tokenizer, "cpu", matcher)
        if not constrained_answer(llm, ids, row, backend):
            return None
        return finished[0] if finished else None
    row = Row(job, eot, tokenizer, "cpu")
    greedy = sampling.temperature < SAMPLING_EPS
    if sampling.seed is not None:
        llm.set_seed(int(sampling.seed))
    tokens = llm.generate(ids, temp=0.0 if greedy else float(sampling.temperature), top_k=1 if greedy else 0,
                          top_p=1.0 if greedy else float(sampling.top_p), min_p=0.0, repeat_penalty=1.0,
                          reset=True)
    try:
        for token in tokens:
            if job.cancelled.is_set():
                return None
            if row.accept(int(token)):
                break
    finally:
        tokens.close()
    return finished[0] if finished else None


def constrained_answer(llm: Any, ids: list[int], row: Any, backend: LlamaCppBackend) -> bool:
    """Decode `row` under its grammar one token at a time: llama.cpp computes the logits, tunesmith masks
    them and steers a row at the end of its budget to close (`rows.steer`, as the transformers engine does)
    and picks the token (`Row.sample`: greedy is the argmax, as llama.cpp's greedy sampler). False when
    the job was cancelled."""
    import numpy as np
    import torch

    from tunesmith.inference.rows import steer

    llama_cpp = require_llamacpp()
    n_vocab = int(llm.n_vocab())
    eot, bias = sorted(row.eot), backend.closing_bias(llm)
    feed = list(ids)
    while True:
        if row.job.cancelled.is_set():
            return False
        llm.eval(feed)
        raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        logits = torch.from_numpy(raw.copy())[None, :]
        if not steer(logits, [row], eot, bias.for_row)[0]:
            row.finish_now("grammar")
            return True
        token = row.sample(logits[0])
        if row.accept(token):
            return True
        feed = [token]


# -- which GGUF file answers ---------------------------------------------------------------------------


def run_gguf(project: Any, run: Any, quant: str, say: Callable[[str], None]) -> Path:
    """The run's export at `quant` (`<run>/export/model-<quant>.gguf`), exported first when missing."""
    path = run.run_dir / "export" / f"model-{quant}.gguf"
    if path.is_file():
        return path
    if quant == "q4_1":
        raise UsageError(f"--quant q4_1 is the builtin model's own file: run {run.run_id} has no q4_1 export",
                         "use --quant f16 (exact), q8_0, q5_0 or q4_0 for a run")
    from tunesmith.ship.gguf_export import export_run

    say(f"run {run.run_id} has no {quant} GGUF export yet: exporting it first ({path})")
    export_run(project.root, run.run_id, fmt="gguf", quant=quant, say=say)
    return path


def run_adapter_gguf(project: Any, run: Any, quant: str, say: Callable[[str], None]) -> Path:
    """The run's LoRA as a GGUF adapter (`<run>/export/adapter-<q>.gguf`), exported first when missing. An
    adapter is written at 16 or 32 bits only (`export --format lora-gguf`): a quantised base gets the f16 one."""
    adapter_quant = quant if quant in ("f32", "bf16", "f16") else "f16"
    path = run.run_dir / "export" / f"adapter-{adapter_quant}.gguf"
    if path.is_file():
        return path
    from tunesmith.ship.gguf_export import export_run

    say(f"run {run.run_id} has no GGUF adapter yet: exporting its LoRA first ({path})")
    export_run(project.root, run.run_id, fmt="lora-gguf", quant=adapter_quant, say=say)
    return path


def default_gguf_folder() -> Path:
    """Where GGUF files made outside a project go (tunesmith's cache)."""
    from tunesmith.models.resolve import default_cache_dir

    return default_cache_dir() / "gguf"


def base_gguf(project: Any, ref: str, checkpoint: Path, quant: str, say: Callable[[str], None]) -> Path:
    """The base model as GGUF at `quant`: the builtin model's own file for q4_1, else the checkpoint
    exported once into `<project>/.tunesmith/gguf/` (without a project, tunesmith's model cache) with the
    same writer `tunesmith export` uses, so base and tuned are compared at the same precision."""
    if quant == "q4_1":
        if not ref.startswith("builtin:"):
            raise UsageError(f"--quant q4_1 is the builtin model's own file, and the base model {ref} is not builtin",
                             "use --quant f16 (exact), q8_0, q5_0 or q4_0")
        from tunesmith.models.resolve import builtin_gguf

        return builtin_gguf(ref.split(":", 1)[1].strip())
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(ref.rstrip("/")).name or "base")
    # `serve --base X` outside a project: tunesmith's model cache
    folder = project.root / ".tunesmith" / "gguf" if project is not None else default_gguf_folder()
    target = folder / f"{name}-{sha256_of(str(checkpoint))[:10]}-{quant}.gguf"
    if target.is_file() and target.with_name(target.name + ".json").is_file():
        return target
    say(f"the base model has no {quant} GGUF yet: exporting {ref} once ({target})")
    _export_checkpoint(checkpoint, target, quant, name=f"{name}-base", ref=ref)
    return target


def _export_checkpoint(checkpoint: Path, target: Path, quant: str, *, name: str, ref: str) -> None:
    import tempfile

    from transformers import AutoConfig

    from tunesmith.inference.loading import load_model
    from tunesmith.io import sha256_file, write_json_atomic
    from tunesmith.models.resolve import tokenizer_in
    from tunesmith.ship.gguf_export import check_exportable, write_gguf
    from tunesmith.ship.gguf_vocab import vocab_spec
    from tunesmith.ship.merge import require_chat_template

    plan = check_exportable(AutoConfig.from_pretrained(str(checkpoint), local_files_only=True))
    tokenizer = tokenizer_in(checkpoint)
    require_chat_template(tokenizer, checkpoint)
    vocab = vocab_spec(tokenizer, plan.vocab_size)
    model = load_model(checkpoint, None, device="cpu", dtype="float32")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_gguf(model, plan, vocab, tmp, quant, name=name, source=checkpoint)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(target.with_name(target.name + ".json"),
                      {"file": target.name, "quant": quant, "sha256": sha256_file(target),
                       "size_bytes": target.stat().st_size, "base_model": ref, "source": str(checkpoint)})


class LlamaCppEngine:
    """`inference.worker.Engine`'s interface over one llama.cpp model, for `tunesmith serve --engine llamacpp`:
    jobs are answered one at a time on a worker thread (llama.cpp decodes one sequence here), a
    ``response_format`` under tunesmith's grammar engine. With `hot_swap` (``serve --gguf-adapter``), GGUF
    LoRA adapters are loaded onto the model and each job's adapter is set on the context before it runs,
    as `Llama(lora_path=...)` sets its one adapter, so an answer is the one `eval --gguf-adapter` gives;
    without it, adapter loading is refused (one model per server)."""

    def __init__(self, backend: LlamaCppBackend, n_ctx: int, refusal: Callable[[], TunesmithError] | None = None,
                 *, hot_swap: bool = False) -> None:
        from tunesmith.models.chat import end_of_turn_ids

        self.backend = backend
        self.llm = backend.llama(n_ctx)
        self.n_ctx = n_ctx
        self.eot = end_of_turn_ids(backend.tokenizer)
        self._refusal = refusal
        self.hot_swap = hot_swap
        self._adapters: dict[str, Any] = {}  # name -> llama_adapter_lora pointer (freed with the model)
        self._applied: str | None = None  # the adapter set on the context now; None: the base alone
        self._running: str | None = None  # the adapter of the job being answered
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._closing = threading.Event()
        self.steps = 0
        self.peak_batch = 0
        self._thread = threading.Thread(target=self._loop, name="tunesmith-llamacpp", daemon=True)
        self._thread.start()

    @property
    def grammar(self) -> Any:
        """The grammar compiler ``response_format`` requests are checked against and decoded under."""
        return self.backend.grammar(self.llm)

    def submit(self, job: Any) -> None:
        from tunesmith.inference.worker import EngineClosed

        if self._closing.is_set():
            raise EngineClosed("the server is shutting down", "retry against a running server")
        self._inbox.put(job)

    def call(self, fn: Callable[[], Any], *, edits_model: bool = True) -> Future[Any]:
        """Model edits (adapter loads and unloads) run on the worker thread between jobs, in the order they
        came (refused without `hot_swap`); other calls run here and now."""
        from tunesmith.inference.worker import EngineClosed

        future: Future[Any] = Future()
        if edits_model and self.hot_swap:
            if self._closing.is_set():
                future.set_exception(EngineClosed("the server is shutting down", "retry against a running server"))
            else:
                self._inbox.put(_Call(fn, future))
            return future
        try:
            assert not edits_model or self._refusal is not None, "a one-model engine needs its refusal"
            future.set_result(fn() if not edits_model else _raise(self._refusal()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)
        return future

    def active_adapters(self) -> set[str]:
        running = self._running
        return {running} if running else set()

    # -- adapters (on the worker thread, through `call`) --------------------------------------------

    def load_adapter(self, name: str, gguf: Path) -> None:
        """Load the GGUF LoRA adapter `gguf` onto the model as `name`."""
        llama_cpp = require_llamacpp()
        pointer = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(gguf).encode("utf-8"))
        if not pointer:
            raise ModelError(f"llama.cpp cannot load the GGUF adapter {gguf.name} on {self.backend.gguf_path.name}",
                             "check that the adapter was trained on this base model")
        self._adapters[name] = pointer

    def unload_adapter(self, name: str) -> bool:
        llama_cpp = require_llamacpp()
        if self._applied == name:
            self._apply(None)
        pointer = self._adapters.pop(name, None)
        if pointer:
            llama_cpp.llama_adapter_lora_free(pointer)
        return True

    def _apply(self, name: str | None) -> None:
        """Set adapter `name` (None: none) on the context, as `Llama(lora_path=...)` does at scale 1."""
        import ctypes

        from tunesmith.inference.rows import BASE_ROW

        name = None if name == BASE_ROW else name
        if name == self._applied:
            return
        llama_cpp = require_llamacpp()
        if name is None:
            status = llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            if name not in self._adapters:
                raise ModelError(f"adapter {name!r} is not loaded on this llama.cpp model", "load it first")
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[name])
            scales = (ctypes.c_float * 1)(1.0)
            status = llama_cpp.llama_set_adapters_lora(self.llm.ctx, adapters, 1, scales)
        if status:
            raise ModelError(f"llama.cpp could not set adapter {name or 'none'} (status {status})",
                             "restart the server; report it if it happens again")
        self._applied = name

    def close(self, grace_s: float = 10.0) -> None:
        from tunesmith.inference.worker import EngineClosed

        self._closing.set()
        self._inbox.put(None)
        self._thread.join(timeout=grace_s + 30)
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Call):
                job.future.set_exception(EngineClosed("the server shut down", "retry against a running server"))
            elif job is not None:
                job.emit(("error", "the server shut down before this request started"))

    def _loop(self) -> None:
        from tunesmith.inference.rows import dropped

        while True:
            job = self._inbox.get()
            if isinstance(job, _Call):
                job.run()
                continue
            if job is None or self._closing.is_set():
                if job is not None:
                    job.emit(("error", "the server is shutting down"))
                return
            if job.cancelled.is_set():
                dropped(job)
                continue
            try:
                self.peak_batch = 1
                self._running = job.adapter
                if self.hot_swap:
                    self._apply(job.adapter)
                if answer(self.backend, self.llm, job.prompt_ids, job.sampling, self.eot, job) is None \
                        and not job.done:
                    dropped(job)
            except Exception as exc:  # noqa: BLE001 - a failing request must not kill the server
                job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self._running = None


class _Call:
    """A model edit queued behind the jobs that came before it."""

    def __init__(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        self.fn, self.future = fn, future

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.future.set_exception(exc)


def adapter_gguf(adapter_dir: Path, checkpoint: Path, folder: Path, quant: str, say: Callable[[str], None]) -> Path:
    """A PEFT LoRA adapter folder as a llama.cpp GGUF adapter for the base `checkpoint`, written once into
    `folder` under a hash of the adapter's files (16 or 32 bits, as `run_adapter_gguf`)."""
    from transformers import AutoConfig

    from tunesmith.ship.gguf_adapter import lora_pairs, read_adapter, write_adapter_gguf
    from tunesmith.ship.gguf_export import check_exportable

    adapter_quant = quant if quant in ("f32", "bf16", "f16") else "f16"
    files = [adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"]
    digest = sha256_of(*(file_sha256(f) for f in files if f.is_file()), str(checkpoint))[:16]
    target = folder / f"adapter-{digest}-{adapter_quant}.gguf"
    if target.is_file():
        return target
    plan = check_exportable(AutoConfig.from_pretrained(str(checkpoint), local_files_only=True))
    config, tensors = read_adapter(adapter_dir)
    pairs = lora_pairs(tensors, adapter_dir)
    if not pairs:
        raise ModelError(f"{adapter_dir.name} has no LoRA A/B pairs", "check that it is a LoRA adapter")
    say(f"converting adapter {adapter_dir.name} to a GGUF adapter once ({target})")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write_adapter_gguf(config, pairs, plan, partial, adapter_quant, name=f"{adapter_dir.name}-lora")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _raise(exc: BaseException) -> Any:
    raise exc
