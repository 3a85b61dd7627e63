"""The FLOPs count behind the MFU figure: forward everywhere, backward only through adapted layers."""

import pytest

from tunesmith.train.flops import Shape, matmul_peak, mean_context, training_flops_per_token

SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152}


def test_shape_reads_a_llama_config_and_counts_its_weights():
    shape = Shape.from_config({"text_config": SMOL})
    assert shape.head_dim == 64 and shape.kv_heads == 3
    per_layer = sum(i * o for i, o in shape.projections().values())
    # SmolLM2-135M: 30 x 3.54 M decoder weights + 28.3 M tied embeddings = 134.5 M parameters
    assert per_layer == 3_538_944
    assert 134e6 < per_layer * 30 + 576 * 49152 < 135e6


def test_mean_context_is_the_causal_average():
    assert mean_context([1]) == 1.0
    assert mean_context([3]) == pytest.approx((1 + 2 + 3) / 3)
    assert mean_context([1, 3]) == pytest.approx((1 + 1 + 2 + 3) / 4)
    assert mean_context([]) == 0.0


def test_all_layers_cost_four_times_the_weights_plus_the_head_where_there_is_a_loss():
    shape = Shape.from_config(SMOL)
    dense = 2 * sum(i * o for i, o in shape.projections().values())
    no_lora = training_flops_per_token(shape, [1], loss_share=1.0, rank=0)
    attention = 4 * 9 * 64 * 1.0
    head = 2 * 576 * 49152
    assert no_lora == pytest.approx(30 * (2 * dense + 3 * attention) + 2 * head)
    # the LM head only where there is a loss: a quarter of the tokens, a quarter of its cost
    assert training_flops_per_token(shape, [1], loss_share=0.25, rank=0) == pytest.approx(no_lora - 1.5 * head)


def test_top_layers_only_back_propagate_through_those_layers():
    shape = Shape.from_config(SMOL)
    every = training_flops_per_token(shape, [200] * 4, loss_share=0.3)
    top10 = training_flops_per_token(shape, [200] * 4, loss_share=0.3, adapted_layers=10)
    forward_only = training_flops_per_token(shape, [200] * 4, loss_share=0.3, adapted_layers=0)
    assert forward_only < top10 < every
    # backward through 10 of 30 layers: a third of the all-layer backward
    per_layer_backward = (every - forward_only) / 30
    assert top10 == pytest.approx(forward_only + 10 * per_layer_backward, rel=1e-3)
    assert training_flops_per_token(shape, [200], loss_share=0.3, adapted_layers=99) == pytest.approx(
        training_flops_per_token(shape, [200], loss_share=0.3))


def test_matmul_peak_is_measured(one_torch_thread):
    peak = matmul_peak("fp32", size=256, seconds=0.2)
    assert 1e8 < peak < 1e13  # between 0.1 GFLOP/s and 10 TFLOP/s on any CPU this runs on
