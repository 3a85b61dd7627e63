"""The lean decoding step gives bitwise the logits of the model's own forward, and is taken only where it does."""

from __future__ import annotations

import pytest

from tunesmith.inference.lean_step import LeanStep, why_not

VOCAB = 300


def _model(kind: str, attn: str = "sdpa", dtype: str = "float32"):
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  attn_implementation=attn)
    torch.manual_seed(7)
    if kind == "llama":  # grouped-query attention, biases, llama3 rope scaling
        config = LlamaConfig(**common, attention_bias=True, mlp_bias=True,
                             rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 64})
        model = LlamaForCausalLM(config)
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    else:
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    with torch.no_grad():  # random init is near zero: scale up so that the logits spread and any slip shows
        for p in model.parameters():
            p.mul_(8.0 if p.dim() == 1 else 1.0)
    return model.to(getattr(torch, dtype)).eval()


def _steps_side_by_side(model, steps: int = 6) -> None:
    """Prefill 3 left-padded prompts into two identical caches, then decode `steps` tokens with the
    model's forward on one and LeanStep on the other: every step's logits equal, bit for bit."""
    import torch

    from tunesmith.inference.kv_cache import new_cache

    lean = LeanStep.for_model(model)
    assert lean is not None, why_not(model)
    assert lean.roll  # the rotary shortcut is what runs (and is checked) here, not the model's function
    gen = torch.Generator().manual_seed(3)
    lengths = [9, 4, 6]
    width = max(lengths)
    ids = torch.randint(0, VOCAB, (3, width), generator=gen)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours, theirs = new_cache(model.config, 64), new_cache(model.config, 64)
    with torch.inference_mode():
        for cache in (ours, theirs):
            model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        last = positions[:, -1:]
        token = torch.randint(0, VOCAB, (3, 1), generator=gen)
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones((3, 1))], dim=-1)
            last = last + 1
            expected = model(input_ids=token, attention_mask=mask, position_ids=last, past_key_values=theirs,
                             use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
            got = lean(token, mask, last, ours)
            assert torch.equal(got, expected), (got - expected).abs().max()
            token = expected.argmax(-1, keepdim=True)


@pytest.mark.parametrize("kind,attn,dtype", [("llama", "sdpa", "float32"), ("llama", "eager", "float32"),
                                             ("llama", "sdpa", "bfloat16"), ("qwen2", "sdpa", "float32"),
                                             ("mistral", "sdpa", "float32")])
def test_lean_steps_give_the_forwards_logits_bit_for_bit(kind, attn, dtype):
    _steps_side_by_side(_model(kind, attn, dtype))


@pytest.mark.parametrize("kernel", ["torch", "auto"])
def test_lean_steps_of_an_int8_model_give_its_forwards_logits(kernel, monkeypatch):
    """int8 projections are fused (q/k/v, gate/up) into one kernel call: still bit for bit, with PyTorch's
    int8 kernel and with tunesmith's own, and the modules' weights become views of the fused ones rather
    than a second copy."""
    from tunesmith.inference import int8_kernel
    from tunesmith.inference.int8 import int8_available, quantize_int8

    if not int8_available():
        pytest.skip("this torch has no int8 weight-only kernel")
    monkeypatch.setenv("TUNESMITH_INT8_KERNEL", kernel)
    int8_kernel.reset()
    try:
        model = quantize_int8(_model("llama"), "cpu")
        _steps_side_by_side(model)
        assert kernel == "auto" or int8_kernel.kernel().name == "torch"
    finally:
        int8_kernel.reset()
    attn = model.model.layers[0].self_attn
    fused = attn.q_proj.weight_int8.untyped_storage().data_ptr()
    assert attn.k_proj.weight_int8.untyped_storage().data_ptr() == fused


def test_models_the_lean_step_does_not_reproduce_keep_their_forward(monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    assert why_not(get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])).eval()) is None
    sliding = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                               sliding_window=16))
    assert "sliding" in why_not(sliding)
    assert "GPT2LMHeadModel is not one of" in why_not(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)))
    model = _model("llama")
    model.model.layers[0] = torch.nn.Identity()
    assert "not the stock ones" in why_not(model)
    monkeypatch.setenv("TUNESMITH_LEAN_DECODE", "0")
    assert why_not(_model("qwen2")) == "TUNESMITH_LEAN_DECODE=0"


def test_the_engine_answers_the_same_with_and_without_the_lean_step(serve_base, monkeypatch):
    """The engine takes the lean step for the tiny Llama, batched rows joining and leaving, and every
    greedy answer is the one the model's forward gives."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.inference.engine import BatchDecoder, Job, Sampling, decode_all
    from tunesmith.models.chat import prompt_ids
    from tunesmith.models.resolve import load_tokenizer

    tok = load_tokenizer(str(serve_base))
    model = AutoModelForCausalLM.from_pretrained(str(serve_base), dtype=torch.float32).eval()
    prompts = prompt_ids(tok, [[{"role": "user", "content": t}] for t in
                               ["a short one", "a much longer prompt " * 5, "mid length prompt", "x", "why"]])

    def answers(lean: bool) -> list[str]:
        monkeypatch.setenv("TUNESMITH_LEAN_DECODE", "1" if lean else "0")
        decoder = BatchDecoder(model, tok, max_batch=3)
        assert (decoder.lean is not None) is lean
        done: dict[int, str] = {}
        jobs = [Job(p, None, Sampling(max_tokens=12 + 5 * i, temperature=0),
                    lambda e, i=i: done.__setitem__(i, e[1].text) if e[0] == "done" else None)
                for i, p in enumerate(prompts)]
        decode_all(decoder, jobs, refill=1)
        return [done[i] for i in range(len(prompts))]

    lean = answers(True)
    assert lean == answers(False)
    assert len(set(lean)) > 1  # the answers differ from prompt to prompt: a slip would show


def test_a_rotary_function_of_another_layout_keeps_the_models_own():
    """The rolled rotary shortcut is taken only where it equals the model's apply_rotary_pos_emb bit for
    bit; an interleaved (GPT-J style) rotation does not, and is kept."""
    import torch

    from tunesmith.inference.lean_step import _rope_is_rotate_half
    from transformers.models.llama import modeling_llama

    def interleaved(q, k, cos, sin):
        def rot(x):
            return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    assert _rope_is_rotate_half(modeling_llama.apply_rotary_pos_emb)
    assert not _rope_is_rotate_half(interleaved)
    assert not _rope_is_rotate_half(lambda q, k: (q, k))  # another signature


def _lora_model(dtype: str = "float32", **extra):
    """The tiny Llama with two LoRA adapters on every linear layer, B initialised at random (so the
    adapters change the logits), in eval mode."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(11)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(_model("llama", dtype=dtype),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets,
                                      init_lora_weights=False, **extra))
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                                           init_lora_weights=False))
    return model.eval()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_steps_of_a_lora_model_give_pefts_logits(dtype):
    """Plain LoRA adapters are applied as PEFT's lora.Linear does, for whichever adapter is active (a bf16
    base has float32 adapter weights: the input is cast as PEFT casts it)."""
    import torch

    model = _lora_model(dtype)
    lean = LeanStep.for_model(model)
    assert lean is not None
    assert any(lora is not None for layer in lean.layers for _, _, lora in layer.qkv.linears)
    if dtype == "bfloat16":
        assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    _steps_side_by_side(model)
    model.set_adapter("second")  # followed at every step, without rebuilding the step
    _steps_side_by_side(model)
    with model.disable_adapter():
        _steps_side_by_side(model)


def test_lora_models_the_lean_step_does_not_reproduce_keep_their_forward():
    from peft import IA3Config, LoraConfig, get_peft_model

    dora = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).eval()
    assert why_not(dora) == "a LoRA variant (DoRA or another) that PEFT computes its own way"
    head = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "lm_head"])).eval()
    assert why_not(head) == "LoRA on the embeddings or the output head"
    training = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.1)).train()
    assert why_not(training) == "the model is in training mode (LoRA dropout)"
    merged = _lora_model()
    merged.merge_adapter()
    assert why_not(merged) == "a merged LoRA adapter (PEFT's merge_adapter)"
    ia3 = get_peft_model(_model("llama"), IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]))
    assert why_not(ia3.eval()) == "a PEFT method other than LoRA"


def test_the_engine_takes_the_lean_step_for_one_adapter_batches_and_answers_the_same(serve_base, monkeypatch):
    """A PEFT model with two adapters: batches of one adapter take the lean step, mixed batches and base rows
    take PEFT's forward, and every greedy answer is the one the forward alone gives."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.inference.engine import BatchDecoder, Job, Sampling, decode_all
    from tunesmith.models.chat import prompt_ids
    from tunesmith.models.resolve import load_tokenizer

    tok = load_tokenizer(str(serve_base))
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(str(serve_base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    model.eval()
    prompts = prompt_ids(tok, [[{"role": "user", "content": t}] for t in
                               ["a short one", "a much longer prompt " * 5, "mid length prompt", "x", "why", "ok"]])

    def answers(lean: bool, adapters: list, max_batch: int) -> tuple[list[str], int]:
        monkeypatch.setenv("TUNESMITH_LEAN_DECODE", "1" if lean else "0")
        decoder = BatchDecoder(model, tok, max_batch=max_batch)
        assert (decoder.lean is not None) is lean
        steps = [0]
        if decoder.lean is not None:
            step = decoder.lean

            def counted(*args):
                steps[0] += 1
                return step(*args)
            decoder.lean = counted
        done: dict[int, str] = {}
        jobs = [Job(p, adapters[i], Sampling(max_tokens=10 + 3 * i, temperature=0),
                    lambda e, i=i: done.__setitem__(i, e[1].text) if e[0] == "done" else None)
                for i, p in enumerate(prompts)]
        decode_all(decoder, jobs, refill=1)
        return [done[i] for i in range(len(prompts))], steps[0]

    one = ["a"] * 6
    lean, taken = answers(True, one, 3)
    assert lean == answers(False, one, 3)[0] and taken > 0
    mixed = ["a", "b", None, "b", "a", None]
    lean_mixed, _ = answers(True, mixed, 3)
    assert lean_mixed == answers(False, mixed, 3)[0]
    alone, taken_alone = answers(True, mixed, 1)  # one row at a time: each batch has one adapter (or the base)
    assert alone == lean_mixed and taken_alone > 0
    assert len(set(lean_mixed)) > 2
