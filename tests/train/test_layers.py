"""`layers`: LoRA on the top k decoder layers only, so that backpropagation stops below them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tunesmith.errors import UsageError
from tunesmith.train.device import DeviceInfo
from tunesmith.train.plan import DEFAULT, FILE, FLAG, PlanInputs, TrainPlan, make_plan

CPU = DeviceInfo("cpu", "test-cpu", False, None)


def plan(n_layers: int | None = 30, **kw) -> TrainPlan:
    return make_plan(PlanInputs(n_examples=200, token_lengths=[100] * 200, model_max_length=2048, device=CPU,
                                n_layers=n_layers, **kw))


def test_every_layer_unless_asked():
    p = plan()
    assert p["layers"] == "all" and p.settings["layers"].source == DEFAULT


def test_flag_beats_file_and_the_plan_says_where_backprop_stops():
    p = plan(file={"layers": 12}, flags={"layers": 10})
    assert p["layers"] == 10 and p.settings["layers"].source == FLAG
    assert "top 10 of 30 decoder layers" in p.settings["layers"].why
    assert plan(file={"layers": 12}).settings["layers"].source == FILE


def test_as_many_layers_as_the_model_has_is_every_layer():
    p = plan(flags={"layers": 40})
    assert p["layers"] == "all" and "the model's 30 layers" in p.settings["layers"].why


@pytest.mark.parametrize("bad", [0, -3, "some"])
def test_a_bad_layer_count_is_refused(bad):
    with pytest.raises(UsageError, match="layers must be a positive number"):
        plan(flags={"layers": bad})


def test_full_fine_tuning_has_no_layer_subset():
    with pytest.raises(UsageError, match="applies to method lora or qlora, not full") as err:
        plan(flags={"layers": 4, "method": "full"})
    assert "method: lora" in err.value.hint


def _model(tiny_model_dir, layers):
    from tunesmith.train.local import build_model

    p = plan(n_layers=2, flags={"layers": layers})
    return build_model(SimpleNamespace(plan=p, device=CPU, model_path=tiny_model_dir))


def test_lora_sits_in_the_top_layers_only_and_lower_layers_get_no_gradient(tiny_model_dir, one_torch_thread):
    import torch

    model = _model(tiny_model_dir, 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n for n in trainable)
    # the same seven projections as "all-linear" (the LM head excluded)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # autograd stops at the lowest adapted layer: nothing below it is even on the graph
    seen: list[str] = []
    for name, module in model.named_modules():
        if name.endswith("layers.0.mlp") or name.endswith("layers.1.mlp"):
            module.register_full_backward_hook(lambda m, gi, go, name=name: seen.append(name))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert any(s.endswith("layers.1.mlp") for s in seen) and not any(s.endswith("layers.0.mlp") for s in seen)


def test_all_layers_adapts_every_layer(tiny_model_dir, one_torch_thread):
    model = _model(tiny_model_dir, "all")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".layers.0." in n for n in trainable) and any(".layers.1." in n for n in trainable)


def test_cli_layers_flag_parsing():
    from tunesmith.cli.train import _layers

    assert _layers(None) is None and _layers("all") == "all" and _layers(" ALL ") == "all" and _layers("10") == 10
    for bad in ("0", "ten", "-2"):
        with pytest.raises(UsageError, match="is not a number of layers"):
            _layers(bad)
