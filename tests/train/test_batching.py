"""Length-bucketed micro-batches: every row once per epoch, little padding, a seeded random order."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.train.batching import (MEGA_BATCHES, LengthBucketSampler, bucketed_order, pad_multiple,
                                      padded_lengths, padding_share)


def _lognormal(n: int = 212, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(np.log(240), 0.6, n), 40, 1024)]


def _padding(order: list[int], lengths: list[int], batch: int, multiple: int = 1) -> float:
    real = padded = 0
    for i in range(0, len(order), batch):
        rows = [lengths[j] for j in order[i:i + batch]]
        real += sum(rows)
        padded += -(-max(rows) // multiple) * multiple * len(rows)
    return 1 - real / padded


def test_every_row_once_per_epoch_and_a_new_order_each_epoch():
    import torch

    lengths = _lognormal()
    sampler = LengthBucketSampler(lengths, 8)
    torch.manual_seed(1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(len(lengths))) and len(sampler) == len(lengths)
    assert first != second
    torch.manual_seed(1)
    assert list(sampler) == first  # the Trainer's seed (and a resume's restored RNG) give the same order


def test_far_less_padding_than_transformers_length_grouping():
    """On a small set with spread lengths transformers' sampler sorts 48-row mega-batches only."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = _lognormal()
    torch.manual_seed(0)
    ours = _padding(list(LengthBucketSampler(lengths, 8)), lengths, 8)
    theirs = _padding(list(LengthGroupedSampler(8, lengths=lengths, generator=torch.Generator().manual_seed(0))),
                      lengths, 8, multiple=8)
    assert ours < 0.08 and theirs > 3 * ours, (ours, theirs)


def test_the_longest_row_comes_first_and_only_the_last_batches_are_short():
    import torch

    lengths = _lognormal(203)  # 203 = 25 batches of 8 + 3
    torch.manual_seed(3)
    order = list(LengthBucketSampler(lengths, 8))
    assert max(lengths) in [lengths[i] for i in order[:8]]
    batches = bucketed_order(lengths, 8, list(range(len(lengths))))
    assert [len(b) for b in batches] == [8] * 25 + [3]
    big = list(range(MEGA_BATCHES * 8 * 2 + 5))  # two mega-batches and a remainder: short batches still last
    sizes = [len(b) for b in bucketed_order([7] * len(big), 8, big)]
    assert sizes[:-1] == [8] * (len(sizes) - 1) and sizes[-1] == 5


def test_the_plans_padding_share_is_the_samplers():
    import torch

    lengths = _lognormal()
    share = padding_share(lengths, 8)
    permutation = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    order = [i for b in bucketed_order(lengths, 8, permutation) for i in b]
    assert share == pytest.approx(_padding(order, lengths, 8))
    assert padding_share(lengths, 8, multiple=8) > share  # rounding up to 8 only adds padding
    assert padded_lengths([5, 9, 9, 3], 2, multiple=8) == [8, 16]
    assert (pad_multiple("cpu"), pad_multiple("cuda")) == (1, 8)


def test_the_trainer_draws_its_batches_through_the_bucket_sampler(tiny_model_dir, tmp_path):
    """Through the Trainer's own data loader (accelerate's wrapping included): every row once, batches
    padded to their longest row exactly; another train_sampling_strategy stays the Trainer's."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tunesmith.train.trainer import PadCollator, TunesmithTrainer

    lengths = [int(x) for x in np.clip(np.random.default_rng(1).lognormal(np.log(40), 0.6, 60), 4, 200)]
    rows = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in lengths]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def trainer(strategy: str) -> TunesmithTrainer:
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                                 train_sampling_strategy=strategy, remove_unused_columns=False, seed=5)
        return TunesmithTrainer(model=model, args=args, train_dataset=rows, data_collator=PadCollator(0, 1))

    torch.manual_seed(5)
    seen, real, computed = [], 0, 0
    for batch in trainer("group_by_length").get_train_dataloader():
        mask = batch["attention_mask"]
        seen += mask.sum(-1).tolist()
        real, computed = real + int(mask.sum()), computed + mask.numel()
        assert int(mask.sum(-1).max()) == mask.shape[1]  # padded to its longest row, not further
    assert sorted(seen) == sorted(lengths)
    assert 1 - real / computed == pytest.approx(padding_share(lengths, 4), abs=0.02)  # what the plan says
    assert type(trainer("random")._get_train_sampler()).__name__ != "LengthBucketSampler"
