"""Trainer callbacks: progress for people, JSON events for scripts, a step log, the overfitting guard."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback


class StepLog(TrainerCallback):
    """Appends every logged step (loss, eval loss, lr, tokens/s) to steps.jsonl and forwards it as an event."""

    def __init__(self, path: Path, emit: Callable[[dict[str, Any]], None], tokens_per_step: float) -> None:
        self.path, self.emit, self.tokens_per_step = path, emit, tokens_per_step
        self._t0 = time.perf_counter()
        self._step0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._step0 = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.perf_counter() - self._t0
        done = state.global_step - self._step0
        event = {"event": "eval" if "eval_loss" in logs else "step", "step": state.global_step,
                 "epoch": round(state.epoch or 0.0, 3), **{k: _num(v) for k, v in logs.items()}}
        if done and elapsed > 0:
            event["tokens_per_s"] = round(done * self.tokens_per_step / elapsed, 1)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        self.emit(event)


def _num(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


class OverfitGuard(TrainerCallback):
    """The guide: eval loss rising while train loss keeps falling means overfitting. Stop.

    After `patience` consecutive evaluations whose eval loss is above the best so far while the
    train loss over the same stretch went down, training stops; the Trainer then restores the best
    checkpoint (load_best_model_at_end).
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: float | None = None
        self.rising = 0
        self.train_at_best: float | None = None
        self.last_train: float | None = None
        self.stopped_at: int | None = None
        self.best_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_train = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if self.best is None or loss < self.best:
            self.best, self.rising, self.best_step = loss, 0, state.global_step
            self.train_at_best = self.last_train
            return
        train_falling = (self.train_at_best is None or self.last_train is None
                         or self.last_train < self.train_at_best)
        self.rising = self.rising + 1 if train_falling else 0
        if self.rising >= self.patience:
            self.stopped_at = state.global_step
            control.should_training_stop = True


class TrainProgress(TrainerCallback):
    """Training progress on stderr (tunesmith.progress): a bar on a terminal, timed lines in a log,
    with the loss, the eval loss and tokens/s as the note."""

    def __init__(self, total_steps: int, enabled: bool = True) -> None:
        self.total, self.enabled = total_steps, enabled
        self.reporter: Any = None
        self._fields: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.enabled or not state.is_world_process_zero:
            return
        from tunesmith.progress import Progress

        total = state.max_steps if state.max_steps and state.max_steps > 0 else self.total
        self.reporter = Progress.open("training", total, unit="steps", done=state.global_step)

    def _note(self) -> str:
        f = self._fields
        return ", ".join(part for part in (f.get("loss") and f"loss {f['loss']}",
                                           f.get("eval") and f"eval loss {f['eval']}",
                                           f.get("tps") and f"{f['tps']} tokens/s") if part)

    def update(self, event: dict[str, Any]) -> None:
        """A logged step or evaluation (StepLog's event): the count and the numbers for the note."""
        if self.reporter is None:
            return
        if "loss" in event:
            self._fields["loss"] = f"{event['loss']:.4f}"
        if "eval_loss" in event:
            self._fields["eval"] = f"{event['eval_loss']:.4f}"
        if "tokens_per_s" in event:
            self._fields["tps"] = f"{event['tokens_per_s']:.0f}"
        self.reporter.update(event.get("step", self.reporter.done), note=self._note())

    def on_step_end(self, args, state, control, **kwargs):
        # a step that logs is reported by `update` with its loss; one that does not is counted here
        if self.reporter is not None and not control.should_log:
            self.reporter.update(state.global_step, note=self._note())

    def on_train_end(self, args, state, control, **kwargs):
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None

    def close(self) -> None:
        """After `trainer.train`: still open means it raised before on_train_end (stops the heartbeat too)."""
        if self.reporter is not None:
            self.reporter.close(failed=True)
            self.reporter = None


def json_emitter(enabled: bool) -> Callable[[dict[str, Any]], None]:
    def emit(event: dict[str, Any]) -> None:
        if enabled:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
    return emit
