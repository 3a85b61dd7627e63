"""Real training on the tiny random Llama: artifacts, learning, the overfitting guard, bad input, mixing, dry run."""

from __future__ import annotations

import hashlib
import json
import re
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, words, write_jsonl, write_project_file
from tunesmith.errors import DataError, ModelError, ProjectError, SealError, TunesmithError
from tunesmith.project import load_project
from tunesmith.train.api import plan_training, train_project


@pytest.fixture(autouse=True)
def _one_thread_and_own_cache(isolated_cache):
    """One torch thread: the tiny model trains ~10x faster than with 2 contending threads (and deterministically)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- helpers ------------------------------------------------------------------------------------


def make_project(root: Path, model_dir: Path, rows: list, extra: str = "", *, split: bool = True) -> Path:
    write_project_file(root, model_dir, extra=extra)
    write_jsonl(root / "data.jsonl", rows)
    if split:
        from tunesmith.data.split import split_file

        res = split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl")
        assert res.train_rows >= 30, "check refuses under 30 training examples"
    return root


def read_steps(run_dir: Path) -> list[dict]:
    lines = (run_dir / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_losses(run_dir: Path) -> list[float]:
    return [s["loss"] for s in read_steps(run_dir) if s["event"] == "step" and "loss" in s]


def dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def assert_no_run_left(project_dir: Path) -> None:
    """Either no run exists at all, or every registered run is marked failed."""
    runs = project_dir / "runs"
    if not runs.exists():
        return
    records = load_project(project_dir).registry().list(None) if (runs / "registry.sqlite").exists() else []
    assert all(r.status == "failed" for r in records), [(r.id, r.status) for r in records]
    dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert {p.name for p in dirs} <= {r.id for r in records}, dirs


def mapping_rows(n: int = 44) -> list[dict]:
    """A fixed tiny mapping the model can memorise: thing i -> one of four colours."""
    colours = ["red", "green", "blue", "black"]
    return [{"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": f"Item {i}: the colour of thing number {i}?"},
                          {"role": "assistant", "content": json.dumps({"color": colours[i % 4]})}]}
            for i in range(n)]


def random_rows(n: int = 44, seed: int = 1) -> list[dict]:
    """Outputs are random strings: nothing generalises, so validation loss must eventually rise."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return [{"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": f"Code {i}: {words(rng, 6)}"},
                          {"role": "assistant", "content": json.dumps({"code": "".join(rng.choice(alphabet) for _ in range(16))})}]}
            for i in range(n)]


# --- LoRA: artifacts, the base model untouched, the registry -------------------------------------


def test_lora_run_writes_adapter_and_leaves_base_model_untouched(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    base_before = dir_digest(tiny_model_dir)

    out = train_project(project, {"epochs": 2, "learning_rate": 5e-3, "eval_every": 2}, progress=False)

    assert dir_digest(tiny_model_dir) == base_before, "training changed the base model's files"
    assert out.run_id and out.run_dir is not None and not out.dry_run
    run_dir = out.run_dir
    assert run_dir.parent == project / "runs"

    record = load_project(project).registry().get(out.run_id)
    assert record.status == "completed" and record.method == "lora"
    assert record.metrics["steps"] == out.metrics["steps"] == out.plan["derived"]["total_steps"]

    for name in ("config.json", "plan.json", "data.json", "metrics.json", "steps.jsonl",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tensorboard").is_dir() and any((run_dir / "tensorboard").iterdir())
    assert not (run_dir / ".adapter.tmp").exists()

    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["settings"]["rank"]["value"] == 8 and plan["settings"]["learning_rate"]["source"] == "flag"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["flags"] == {"epochs": 2, "learning_rate": 5e-3, "eval_every": 2}
    data = json.loads((run_dir / "data.json").read_text())
    assert data["train_sha256"] == hashlib.sha256((project / "data/train.jsonl").read_bytes()).hexdigest()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == out.metrics["steps"] and "stopped_early" not in metrics

    steps = read_steps(run_dir)
    assert steps and all(isinstance(s, dict) and s["event"] in ("step", "eval") for s in steps)
    losses = step_losses(run_dir)
    assert len(losses) == out.metrics["steps"]
    assert losses[-1] < losses[0]
    assert any(s["event"] == "eval" and "eval_loss" in s for s in steps)

    adapter_cfg = json.loads((run_dir / "adapter/adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 16
    assert Path(adapter_cfg["base_model_name_or_path"]).resolve() == Path(tiny_model_dir).resolve()

    weights = load_file(str(run_dir / "adapter/adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    lora_a = {k: v for k, v in weights.items() if "lora_A" in k}
    assert lora_b and len(lora_a) == len(lora_b)
    # LoRA's B starts at zero: every one of them moved, so every adapted layer learned something
    assert all(float(v.abs().sum()) > 0 for v in lora_b.values()), [k for k, v in lora_b.items() if not v.abs().sum()]
    assert not any("embed_tokens" in k or k.endswith("q_proj.weight") for k in weights)  # adapter only

    tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    base_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert tok.chat_template and tok.chat_template == base_tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == base_tok.pad_token


# --- learning ------------------------------------------------------------------------------------


def test_loss_falls_on_a_memorisable_mapping(tmp_path, tiny_model_dir):
    # Full fine-tuning: the tiny random model's embeddings (std 0.02) are frozen under LoRA, which caps
    # how confident its logits can get (loss cannot go far below ln(vocab)); every weight can move here.
    project = make_project(tmp_path / "p", tiny_model_dir, mapping_rows())
    out = train_project(project, {"method": "full", "learning_rate": 1e-2, "epochs": 8, "eval_every": 100},
                        progress=False)
    losses = step_losses(out.run_dir)
    assert len(losses) == out.metrics["steps"] >= 8
    assert losses[-1] < 0.5 * losses[0], losses
    assert out.metrics["final_step_loss"] == pytest.approx(losses[-1], rel=1e-4)
    assert (out.run_dir / "model" / "config.json").is_file()
    assert load_project(project).registry().get(out.run_id).status == "completed"


def test_overfitting_guard_stops_and_restores_best(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    project = make_project(tmp_path / "p", tiny_model_dir, random_rows())
    out = train_project(project, {"method": "full", "learning_rate": 1e-2, "epochs": 20, "eval_every": 1,
                                  "patience": 2, "effective_batch": 4, "converge": False}, progress=False)
    m = out.metrics
    planned = out.plan["derived"]["total_steps"]
    assert "stopped_early" in m and m["stopped_early"], m
    stop = m["stopped_early"]
    assert m["steps"] < planned
    assert stop["at_step"] == m["steps"]
    assert stop["best_step"] < stop["at_step"]
    assert m["best_step"] == stop["best_step"]
    assert "overfitting" in stop["why"]

    evals = {s["step"]: s["eval_loss"] for s in read_steps(out.run_dir) if s["event"] == "eval"}
    assert min(evals.values()) == pytest.approx(evals[stop["best_step"]])
    later = [loss for step, loss in evals.items() if step > stop["best_step"]]
    assert len(later) >= 2 and all(loss > evals[stop["best_step"]] for loss in later)

    record = load_project(project).registry().get(out.run_id)
    assert record.status == "completed" and record.summary["stopped_early"]["at_step"] == stop["at_step"]

    # The saved model is the best checkpoint, not the last step.
    best_ckpt = out.run_dir / "checkpoints" / f"checkpoint-{stop['best_step']}"
    assert best_ckpt.is_dir()
    saved, best = load_file(str(out.run_dir / "model/model.safetensors")), load_file(str(best_ckpt / "model.safetensors"))
    assert saved.keys() == best.keys() and all(bool((saved[k] == best[k]).all()) for k in saved)


# --- bad input: a clear error with a hint, nothing half-written -------------------------------------


def _raises(project_dir: Path, exc_type: type[TunesmithError], flags: dict | None = None) -> TunesmithError:
    with pytest.raises(exc_type) as info:
        train_project(project_dir, flags or {}, progress=False)
    err = info.value
    assert isinstance(err, TunesmithError) and err.hint, (type(err), str(err))
    assert_no_run_left(project_dir)
    return err


def test_missing_training_split(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44), split=False)
    err = _raises(project, DataError)
    assert "train.jsonl" in str(err) and "tunesmith split" in err.hint


def test_broken_seal(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    test = project / "data" / "test.jsonl"
    lines = test.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].replace("Item", "Itemz", 1)
    test.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = _raises(project, SealError)
    assert "test.jsonl" in str(err) and "1 changed" in str(err)
    assert "split" in err.hint


def test_missing_seal(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    (project / "data" / "test.seal.json").unlink()
    err = _raises(project, SealError)
    assert "tunesmith split" in err.hint


def test_train_overlapping_test(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    test_line = (project / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0]
    train = project / "data" / "train.jsonl"
    n_train = len(train.read_text(encoding="utf-8").splitlines())
    with train.open("a", encoding="utf-8") as fh:
        fh.write(test_line + "\n")
    err = _raises(project, DataError)
    text = " ".join([str(err), *err.details])
    assert "test_overlap" in text, (str(err), err.details)
    assert str(n_train + 1) in " ".join(d for d in err.details if "test_overlap" in d)
    assert "check" in err.hint


def test_unknown_builtin_model(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    yaml_file = project / "tunesmith.yaml"
    text = yaml_file.read_text()
    assert re.search(r"(?m)^base_model: ", text)
    yaml_file.write_text(re.sub(r"(?m)^base_model: .*$", "base_model: 'builtin:nope'", text))
    err = _raises(project, ModelError)
    assert "nope" in str(err) and "builtin:" in err.hint


@pytest.mark.parametrize("where", ["flag", "file"])
def test_max_length_that_truncates_every_assistant_turn(tmp_path, tiny_model_dir, where):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44), extra="max_length: 16\n" if where == "file" else "")
    n_train = len((project / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines())
    err = _raises(project, DataError, {"max_length": 16} if where == "flag" else None)
    msg = str(err)
    assert f"{n_train} example(s) have no trainable token" in msg and "16 tokens" in msg
    assert "lines 1, 2, 3" in msg
    assert "max_length" in err.hint


def test_config_value_out_of_range(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44), extra="train:\n  rank: 0\n  mix:\n    source: self\n    fraction: 0.9\n")
    err = _raises(project, ProjectError)
    assert "tunesmith.yaml" in str(err)
    assert any(d.startswith("train.rank") for d in err.details), err.details
    assert any(d.startswith("train.mix.fraction") for d in err.details), err.details


def test_failure_during_training_marks_the_run_failed(tmp_path, tiny_model_dir, monkeypatch):
    import tunesmith.train.local as local

    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in the training loop")

    monkeypatch.setattr(local, "run_training", boom)
    with pytest.raises(RuntimeError):
        train_project(project, {"epochs": 1}, progress=False)
    (record,) = load_project(project).registry().list(None)
    assert record.status == "failed" and "simulated crash" in (record.error or "")
    assert_no_run_left(project)


@pytest.mark.parametrize("flags", [{"rank": 0}, {"batch_size": 0}, {"max_length": -5}, {"epochs": -1},
                                   {"learning_rate": 5.0}, {"eval_every": 0}, {"patience": 0}],
                         ids=lambda f: next(iter(f)))
def test_out_of_range_flags_are_usage_errors(tmp_path, tiny_model_dir, flags):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    with pytest.raises(TunesmithError) as info:
        train_project(project, flags, dry_run=True, progress=False)
    assert next(iter(flags)).replace("_", "-") in str(info.value) + info.value.hint


# --- data mixing ------------------------------------------------------------------------------


def test_mix_from_a_file(tmp_path, tiny_model_dir):
    from tunesmith.train.mixing import mix_count

    general = [{"messages": [{"role": "user", "content": f"Tell me a fact about {w}."},
                             {"role": "assistant", "content": f"The {w} is a fine general topic number {i}."}]}
               for i, w in enumerate(["rivers", "mountains", "cities", "colors", "music", "bridges", "rain", "stars", "bread", "trees"])]
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44),
                           extra="train:\n  mix:\n    source: general.jsonl\n    fraction: 0.1\n")
    write_jsonl(project / "general.jsonl", general)
    n_task = len((project / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines())
    k = mix_count(n_task, 0.1)
    assert k == -(-n_task // 9)

    prep, plan = plan_training(load_project(project), {}, measure=False)
    rows = prep.train.rows + prep.eval.rows
    mixed = [r for r in rows if r.source == "mix"]
    assert len(rows) == n_task + k and len(mixed) == k
    assert plan["derived"]["examples"] == n_task + k and plan["derived"]["mixed_examples"] == k
    assert not [r for r in prep.eval.rows if r.source == "mix"]  # validation is task rows only
    general_answers = {ex["messages"][1]["content"] for ex in general}
    for r in mixed:
        text = prep.tokenizer.decode(r.enc.input_ids)
        assert any(a in text for a in general_answers) and SYSTEM not in text
        assert r.enc.trainable > 0

    said: list[str] = []
    out = train_project(project, {"epochs": 1}, progress=False, say=said.append)
    assert any(f"mixing {k} general example(s) into {n_task}" in s for s in said), said
    assert load_project(project).registry().get(out.run_id).status == "completed"


def test_plan_counts_mixed_rows(tmp_path, tiny_model_dir):
    general = [{"messages": [{"role": "user", "content": f"Tell me general fact number {i}."},
                             {"role": "assistant", "content": f"General fact {i} is true."}]} for i in range(20)]
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44),
                           extra="train:\n  mix:\n    source: general.jsonl\n    fraction: 0.1\n")
    write_jsonl(project / "general.jsonl", general)
    prep, plan = plan_training(load_project(project), {}, measure=False)
    d = plan["derived"]
    assert (d["train_examples"], d["eval_examples"]) == (len(prep.train.rows), len(prep.eval.rows))
    per_step = prep.plan["batch_size"] * d["gradient_accumulation"]
    assert d["steps_per_epoch"] == -(-len(prep.train.rows) // per_step)


def test_mix_self_replay_generates_and_caches(tmp_path, tiny_model_dir, monkeypatch):
    import tunesmith.train.mixing as mixing

    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(40),
                           extra="train:\n  mix:\n    source: self\n    fraction: 0.01\n")
    n_task = len((project / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines())
    k = mixing.mix_count(n_task, 0.01)
    assert k == 1

    prep, _ = plan_training(load_project(project), {}, measure=False)
    caches = list((project / ".tunesmith").glob("replay-*.jsonl"))
    assert len(caches) == 1
    cached = [json.loads(line) for line in caches[0].read_text(encoding="utf-8").splitlines()]
    assert len(cached) == k
    assert [m["role"] for m in cached[0]["messages"]] == ["user", "assistant"]
    mixed = [r for r in prep.train.rows + prep.eval.rows if r.source == "mix"]
    assert len(mixed) == (1 if cached[0]["messages"][1]["content"].strip() else 0)
    assert len(prep.train.rows) + len(prep.eval.rows) == n_task + len(mixed)

    # The second time the cache answers: no generation.
    def no_generation(*args, **kwargs):
        raise AssertionError("replay answers should come from the cache")

    monkeypatch.setattr(mixing, "generate_answers", no_generation)
    prep2, _ = plan_training(load_project(project), {}, measure=False)
    assert [r.enc.input_ids for r in prep2.train.rows + prep2.eval.rows if r.source == "mix"] == [r.enc.input_ids for r in mixed]


def test_mix_source_missing(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44),
                           extra="train:\n  mix:\n    source: nowhere.jsonl\n")
    err = _raises(project, DataError)
    assert "nowhere.jsonl" in str(err) and "self" in err.hint


# --- the CLI's dry run ---------------------------------------------------------------------------


def test_cli_dry_run_prints_plan_and_creates_no_run(tmp_path, tiny_model_dir):
    from tunesmith.cli import app

    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44))
    result = CliRunner().invoke(app, ["train", "-p", str(project), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["plan"]
    plan = events[0]
    assert plan["settings"]["rank"]["source"] == "data" and plan["settings"]["rank"]["value"] == 8
    assert plan["settings"]["alpha"]["value"] == 16
    assert plan["derived"]["seconds_per_step"] > 0
    assert plan["derived"]["estimated_minutes"] >= 0
    assert plan["derived"]["total_steps"] >= 1 and plan["derived"]["disk"]["total_mb"] > 0
    assert "tokens" in plan["cost"] and "$" in plan["cost"]  # the one cost line of `tunesmith cost` for this run
    assert not (project / "runs").exists() or not any(p.is_dir() for p in (project / "runs").iterdir())
    if (project / "runs" / "registry.sqlite").exists():
        assert load_project(project).registry().list(None) == []


def test_cli_bad_input_exits_2_with_hint(tmp_path, tiny_model_dir):
    from tunesmith.cli import app

    project = make_project(tmp_path / "p", tiny_model_dir, clean_examples(44), split=False)
    result = CliRunner().invoke(app, ["train", "-p", str(project), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "tunesmith split" in result.output


# --- convergence: the run stops once validation stops improving -----------------------------------

def test_training_stops_at_convergence_and_says_so(tmp_path, tiny_model_dir, monkeypatch):
    """A real tiny run: every evaluation logs the answer match, and once the rule sees no progress (here
    a min_delta no loss gain can meet) after the first epoch, training stops before its planned steps."""
    import tunesmith.train.convergence as convergence

    monkeypatch.setattr(convergence, "MIN_DELTA", 0.99)
    monkeypatch.setattr(convergence.ConvergenceStop.__init__, "__defaults__", (2, 0.99, 1.0))
    project = make_project(tmp_path / "p", tiny_model_dir, mapping_rows())
    out = train_project(project, {"learning_rate": 5e-3, "epochs": 6, "eval_every": 1, "effective_batch": 8,
                                  "patience": 50}, progress=False)
    evals = [s for s in read_steps(out.run_dir) if s["event"] == "eval"]
    assert evals and all(0.0 <= s["eval_answer_match"] <= 1.0 for s in evals)
    c = out.metrics["converged"]
    assert c["at_step"] == out.metrics["steps"] < out.plan["derived"]["total_steps"] == c["of_steps"]
    assert c["epoch"] >= 1.0 and "did not improve over the last 2 evaluations" in c["why"]


def test_no_convergence_stop_when_switched_off(tmp_path, tiny_model_dir, monkeypatch):
    import tunesmith.train.convergence as convergence

    monkeypatch.setattr(convergence.ConvergenceStop.__init__, "__defaults__", (2, 0.99, 1.0))
    project = make_project(tmp_path / "p", tiny_model_dir, mapping_rows())
    out = train_project(project, {"learning_rate": 5e-3, "epochs": 2, "eval_every": 1, "effective_batch": 8,
                                  "patience": 50, "converge": False}, progress=False)
    assert out.plan["settings"]["converge"]["value"] is False
    assert "converged" not in out.metrics and out.metrics["steps"] == out.plan["derived"]["total_steps"]
