"""A tiny project with a sealed test split, and registry runs whose outputs are made directly.

Training is not what these tests are about, so the runs are built by hand: a PEFT LoRA adapter on the
tiny Llama with its B matrices randomised (B is zero at initialisation, and such an adapter would
change nothing), saved with `save_pretrained` like training saves it; and "full fine-tunes" that are
just other tiny checkpoints in `<run>/model` (a GQA Llama with untied embeddings and a Llama 3
template, a Qwen2 with q/k/v biases, the tiny Llama with a SmolLM-style digit-splitting tokenizer,
a GPT-2 config for the unsupported-architecture error).
"""

import shutil
from pathlib import Path

import pytest

from datagen import add_run, sealed_project
from fixtures.tiny_models import build_tiny_tokenizer

MAX_NEW = 8


def make_project(root: Path, model_dir: Path) -> Path:
    return sealed_project(root, model_dir, 24, max_new_tokens=MAX_NEW)


def build_adapter(model_dir: Path, out: Path, *, seed: int = 0, scale: float = 0.3) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    # lora_A is drawn from the global generator: seeded, the adapter is the same whatever ran before, so
    # a near-tie that llama.cpp's f16 arithmetic flips cannot come and go with the test order
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


def _save_tiny(out: Path, model, tokenizer) -> Path:
    """Weights scaled up (as `talkative_model_dir` does) so greedy answers are varied text that a
    layout mistake would change; then saved with the tokenizer."""
    import torch
    from transformers import GenerationConfig

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(8.0)

    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def build_gqa_llama(out: Path) -> Path:
    """2 layers, 4 query heads over 2 key/value heads, untied output, Llama 3 template (BOS added)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer("llama3")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    return _save_tiny(out, LlamaForCausalLM(config), tokenizer)


def build_qwen2(out: Path) -> Path:
    """A tiny Qwen2 (q/k/v biases, tied embeddings, 8 embedding rows more than the tokenizer has tokens)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer("chatml")
    config = Qwen2Config(vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # biases are zero at initialisation; make them count
        for name, param in model.named_parameters():
            if name.endswith("proj.bias"):
                param.normal_(0, 0.05)
    return _save_tiny(out, model, tokenizer)


def build_digit_splitting(model_dir: Path, out: Path) -> Path:
    """The tiny model with a SmolLM-style pre-tokenizer: digits one by one, then GPT-2's split."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def ship(tmp_path_factory, tiny_model_dir):
    """The project, its run ids, and where the pieces are (built once per session)."""
    from transformers import GPT2Config

    parts = tmp_path_factory.mktemp("ship-parts")
    adapter = build_adapter(tiny_model_dir, parts / "adapter")
    gpt2 = parts / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=800, bos_token_id=0, eos_token_id=0,
               architectures=["GPT2LMHeadModel"]).save_pretrained(gpt2)
    root = make_project(tmp_path_factory.mktemp("ship-project"), tiny_model_dir)
    runs = {
        "lora": "20250101-000001-aaaa-lora",
        "qlora": "20250101-000002-bbbb-qlora",
        "gqa": "20250101-000003-cccc-gqa",
        "qwen2": "20250101-000004-dddd-qwen2",
        "gpt2": "20250101-000005-eeee-gpt2",
        "empty": "20250101-000006-ffff-empty",
        "digits": "20250101-000007-abcd-digits",
    }
    add_run(root, runs["lora"], method="lora", base_model=tiny_model_dir, adapter=adapter)
    add_run(root, runs["qlora"], method="qlora", base_model=tiny_model_dir, adapter=adapter)
    add_run(root, runs["gqa"], method="full", base_model=tiny_model_dir, model=build_gqa_llama(parts / "gqa"))
    add_run(root, runs["qwen2"], method="full", base_model=tiny_model_dir, model=build_qwen2(parts / "qwen2"))
    add_run(root, runs["gpt2"], method="full", base_model=tiny_model_dir, model=gpt2)
    add_run(root, runs["empty"], method="lora", base_model=tiny_model_dir, status="failed")
    add_run(root, runs["digits"], method="full", base_model=tiny_model_dir,
            model=build_digit_splitting(tiny_model_dir, parts / "digits"))
    return {"root": root, "runs": runs, "adapter": adapter, "base": tiny_model_dir, "add_run": add_run,
            "max_new": MAX_NEW, "prompts": len((root / "data" / "test.jsonl").read_text().splitlines())}
