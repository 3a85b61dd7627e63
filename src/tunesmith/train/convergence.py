"""Data passes chosen by convergence: stop once the validation slice has stopped getting better.

The guide's 3 epochs are a ceiling, not a target: a narrow format task is often learned well before
them, and every pass after that costs minutes on a CPU. After each evaluation the validation slice
gives two numbers, the loss and the answer match (the share of rows whose whole answer is the model's
top choice, token after token: what greedy decoding would write, so what the contract checks). Once
neither improved over the last `window` evaluations (the loss by at least `min_delta` of itself) and at
least `min_epochs` passes are done, training stops; the best checkpoint (lowest validation loss) is
the one kept, as with the overfitting guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback

WINDOW = 2
MIN_DELTA = 0.01
MIN_EPOCHS = 1.0


@dataclass
class Plateau:
    """The stopping rule, apart from the Trainer (so it can be tested and replayed on a log)."""

    window: int = WINDOW
    min_delta: float = MIN_DELTA
    losses: list[float] = field(default_factory=list)
    matches: list[float | None] = field(default_factory=list)

    def add(self, loss: float, match: float | None) -> bool:
        """Record an evaluation; True when the last `window` of them improved on nothing before them."""
        self.losses.append(loss)
        self.matches.append(match)
        if len(self.losses) <= self.window:
            return False
        before, recent = self.losses[: -self.window], self.losses[-self.window:]
        if min(recent) < min(before) * (1 - self.min_delta):
            return False
        seen = [m for m in self.matches[: -self.window] if m is not None]
        new = [m for m in self.matches[-self.window:] if m is not None]
        return not (new and (not seen or max(new) > max(seen)))

    def why(self) -> str:
        best = min(self.losses)
        match = max((m for m in self.matches if m is not None), default=None)
        return (f"validation loss (best {best:.4f}) and answer match"
                + (f" (best {match:.0%})" if match is not None else "")
                + f" did not improve over the last {self.window} evaluations")


class ConvergenceStop(TrainerCallback):
    def __init__(self, window: int = WINDOW, min_delta: float = MIN_DELTA, min_epochs: float = MIN_EPOCHS) -> None:
        self.rule = Plateau(window, min_delta)
        self.min_epochs = min_epochs
        self.stopped_at: int | None = None
        self.epoch: float | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        flat = self.rule.add(float(loss), (metrics or {}).get("eval_answer_match"))
        if flat and (state.epoch or 0.0) >= self.min_epochs and not control.should_training_stop:
            self.stopped_at, self.epoch = state.global_step, round(state.epoch or 0.0, 2)
            control.should_training_stop = True
