"""The transformers Trainer with tunesmith's loss: logits only where there is something to learn.

Most tokens of a narrow-task example are prompt; computing the vocabulary projection for them and
then masking them out is the single largest waste in a plain SFT step. Here the hidden states are
gathered at the labelled positions first and only those go through the LM head. Batches are grouped
by length and padded per batch, so almost nothing is padding either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers import Trainer

from tunesmith.models.chat import IGNORE


class PadCollator:
    """Right-pads a batch to its own longest row; labels padded with -100."""

    def __init__(self, pad_id: int, multiple_of: int = 8) -> None:
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        longest = -(-longest // self.multiple_of) * self.multiple_of
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The *ForCausalLM module under PEFT / DDP wrappers (LoRA layers live inside it)."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def _decoder_and_head(lm: torch.nn.Module) -> tuple[Any, Any]:
    try:
        decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None
    if decoder is None or head is None or getattr(lm.config, "logit_scale", None):
        return None, None
    return decoder, head


def selective_lm_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      num_items: torch.Tensor | int | None, matches: AnswerMatch | None = None) -> torch.Tensor:
    """Sum of next-token cross-entropy over labelled positions, divided by num_items (or their count).
    With `matches`, also counts the rows whose every labelled token is the model's top choice."""
    lm = _causal_lm(model)
    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    decoder, head = _decoder_and_head(lm)
    if decoder is not None:
        hidden = decoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][keep]).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    else:  # an architecture without the usual decoder/head split: full logits, same loss
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1][keep].float()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    if matches is not None:
        matches.add(keep, logits.argmax(-1) == targets[keep])
    denom = num_items if num_items is not None else keep.sum().clamp(min=1)
    return loss / denom


class AnswerMatch:
    """Teacher-forced answer match on the validation slice: the share of rows whose whole answer is the
    model's top choice token after token, i.e. what greedy decoding would write. Free (the evaluation
    computes those logits anyway) and, unlike the loss, it says when the answers stop getting right."""

    def __init__(self) -> None:
        self.rows = 0
        self.exact = 0

    def add(self, keep: torch.Tensor, correct: torch.Tensor) -> None:
        row_of = keep.nonzero()[:, 0]
        wrong = torch.zeros(keep.shape[0], dtype=torch.long, device=keep.device)
        wrong.index_add_(0, row_of, (~correct).long())
        labelled = keep.any(dim=1)
        self.rows += int(labelled.sum())
        self.exact += int((labelled & (wrong == 0)).sum())

    def take(self) -> float | None:
        """The share since the last call, and reset."""
        share = self.exact / self.rows if self.rows else None
        self.rows = self.exact = 0
        return share


class TunesmithTrainer(Trainer):
    """Trainer whose loss skips the LM head on prompt and padding positions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Our loss divides by the number of labelled tokens across the accumulated batches, so the
        # Trainer must count them and must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self.answer_match = AnswerMatch()

    def _get_train_sampler(self, train_dataset=None):
        # rows of near-equal length per micro-batch, sorted over many batches (`batching`); other strategies
        # (train.extra's train_sampling_strategy) are the Trainer's own
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        from tunesmith.train.batching import LengthBucketSampler

        return LengthBucketSampler([len(r["input_ids"]) for r in dataset], self.args.per_device_train_batch_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # accelerate applies mixed precision by wrapping model.forward; this loss calls the decoder and
        # the head directly, so it must enter the autocast context itself (bf16 on capable CPUs/GPUs).
        with self.accelerator.autocast():
            loss = selective_lm_loss(model, inputs, num_items_in_batch,
                                     None if model.training else self.answer_match)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items counts labelled tokens over all processes; DDP averages gradients, so scale back.
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # an evaluation's metrics pass through here: add the answer match counted during it
        if "eval_loss" in logs:
            if self.accelerator.num_processes > 1:  # every process saw its shard; all must decide alike
                counts = torch.tensor([self.answer_match.rows, self.answer_match.exact], device=self.accelerator.device)
                self.answer_match.rows, self.answer_match.exact = (int(x) for x in self.accelerator.reduce(counts, "sum"))
            share = self.answer_match.take()
            if share is not None:
                logs["eval_answer_match"] = round(share, 4)  # in place: on_evaluate's metrics are this dict
        super().log(logs, *args, **kwargs)
