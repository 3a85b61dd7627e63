"""Dated tables behind `tunesmith cost`: GPU rental prices, GPU speeds, and the throughput model.

Token prices live beside the code that bills them (`distill.prices` for teacher and judge,
`train.hosted.prices` for hosted fine-tuning); this module holds what only the cost estimate needs.
Every figure names its source; where a figure is an assumption, it says so. All of them can be
overridden from the command line (`--gpu-dollars-per-hour`, `--judge-price`) or tunesmith.yaml.

Throughput is not measured here: it is computed from each GPU's datasheet peak and a stated
utilisation, because published fine-tuning benchmarks disagree by 3x depending on the framework.
The model, per token of training data:

    LoRA/QLoRA: 4 x N FLOPs (forward 2N + backward through the activations 2N; no weight gradients
                for the frozen base). Full fine-tuning: 6 x N (Kaplan et al. 2020, the usual 6N).
    tokens/s   = MFU x peak FLOP/s / (FLOPs per token),  MFU = 0.30 (an assumption)

Cross-check with the guide (mid-2026): "Training run (500 examples, 8B model) ~$1-$5 total (30-90
minutes)" on an RTX 4090; at its own 2,000 tokens per example x 3 epochs that is 3M tokens, and this
model gives 0.30 x 165 TFLOP/s / (4 x 8e9) = 1,547 tokens/s: 32 minutes, the fast end of its range.
Small models (1B and below) rarely reach 30 % utilisation: there the figure is a lower bound on time.

Serving (the self-hosted inference line): prompt tokens (prefill) run at the same MFU with 2N FLOPs
per token; generated tokens are bound by memory bandwidth: each decoding step reads the weights once
(2 bytes per parameter, bf16) for DECODE_STREAMS concurrent requests, at BANDWIDTH_EFFICIENCY of the
datasheet bandwidth (continuous batching as vLLM does it), capped by the compute bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: When the GPU prices below were read (each row names where).
GPU_PRICES_AS_OF = "2026-06"

#: Model FLOPs utilisation assumed for training and prefill (see the module docstring).
MFU = 0.30
#: FLOPs per parameter per training token, by method.
TRAIN_FLOPS_PER_PARAM = {"lora": 4, "qlora": 4, "full": 6}
#: Concurrent requests a serving engine decodes together, and the share of bandwidth it gets.
DECODE_STREAMS = 32
BANDWIDTH_EFFICIENCY = 0.6
BYTES_PER_PARAM = 2

#: Model size classes (parameters) of the throughput table; a model counts as the smallest class that
#: holds it, so a 135M model is priced as 1B (slower: an upper bound on time and cost).
SIZE_CLASSES: dict[str, float] = {"1B": 1e9, "3B": 3e9, "8B": 8e9, "13B": 13e9, "34B": 34e9, "70B": 70e9}

#: The guide's GPU: its hands-on section and its budget table assume an RTX 4090 (24 GB).
DEFAULT_GPU = "RTX 4090"


@dataclass(frozen=True)
class Gpu:
    name: str
    #: dense 16-bit tensor TFLOP/s (bf16, fp16 on the T4), no sparsity
    peak_tflops: float
    bandwidth_gbs: float
    memory_gb: float
    dollars_per_hour: float
    #: where the spec and the price come from
    spec_source: str
    price_source: str


GPUS: dict[str, Gpu] = {g.name: g for g in (
    Gpu("T4", 65, 320, 16, 0.526, "NVIDIA T4 datasheet (fp16 tensor; no bf16)",
        "AWS g4dn.xlarge on-demand, us-east-1"),
    Gpu("L4", 121, 300, 24, 0.805, "NVIDIA L4 datasheet (bf16 dense)", "AWS g6.xlarge on-demand, us-east-1"),
    Gpu("A10G", 70, 600, 24, 1.006, "AWS's A10G (Baseten, 'NVIDIA A10 vs A10G': 70 TFLOPS tensor, 600 GB/s)",
        "AWS g5.xlarge on-demand, us-east-1 (June 2026)"),
    Gpu("RTX 4090", 165, 1008, 24, 2.25, "NVIDIA Ada whitepaper (bf16, fp32 accumulate, dense)",
        "the guide: $1.50-$3/hour cloud rental; midpoint"),
    Gpu("A100", 312, 2039, 80, 3.00, "NVIDIA A100 80GB SXM datasheet (bf16 dense)",
        "the guide: 'about two to four dollars an hour'; midpoint (list prices early 2026: $1.49-$2.49)"),
    Gpu("H100", 989, 3350, 80, 3.24, "NVIDIA H100 SXM datasheet (bf16 dense)",
        "on-demand list prices early 2026 (Lambda, CoreWeave, RunPod: $2.49-$3.99); midpoint"),
)}

#: The README's figure for the embedded model on this kind of machine: the example project
#: (examples/pyfunc-json: 87,362 tokens per epoch under SmolLM2's chat template, 3 epochs) trains in
#: about 8 minutes on 2 CPU cores, i.e. ~546 tokens/s (benchmarks/README.md measured 534 with dropout 0,
#: the plan's CPU default).
CPU_README_TOKENS = 87_362 * 3
CPU_README_SECONDS = 8 * 60
CPU_SOURCE = ("README: the example project (262,086 trained tokens) trains in about 8 minutes on 2 CPU cores "
              "(~546 tokens/s; benchmarks/README.md measured 534)")


def cpu_tokens_per_s() -> float:
    return CPU_README_TOKENS / CPU_README_SECONDS


#: How a GPU's name is recognised in a device name or a --gpu flag ("NVIDIA A100-SXM4-80GB", "rtx4090").
_GPU_NAMES = {"T4": r"\bt4\b", "L4": r"\bl4\b", "A10G": r"\ba10g\b", "RTX 4090": r"\b(rtx[\s-]*)?4090\b",
              "A100": r"\ba100", "H100": r"\bh100"}


def match_gpu(name: str | None) -> Gpu | None:
    """The table's GPU for a name such as "a100", "NVIDIA H100 80GB HBM3" or "rtx4090"; None if unknown."""
    if not name:
        return None
    low = name.lower()
    for key, pattern in _GPU_NAMES.items():
        if re.search(pattern, low):
            return GPUS[key]
    return None


def pick_gpu(flag: str | None, device: str = "") -> Gpu | None:
    """--gpu when given (None if the table does not know it), else this machine's CUDA GPU when the
    table knows it, else the guide's."""
    if flag:
        return match_gpu(flag)
    return (match_gpu(device) if device.startswith("cuda") else None) or GPUS[DEFAULT_GPU]


def hourly_rate(gpu: Gpu | None, flag: float | None) -> tuple[float | None, str]:
    """US$ per hour and where it comes from: the flag, else the table's row."""
    if flag is not None:
        return flag, "--gpu-dollars-per-hour"
    if gpu is None:
        return None, ""
    return gpu.dollars_per_hour, f"{gpu.price_source} (GPU table of {GPU_PRICES_AS_OF})"


def size_class(n_params: int) -> tuple[str, float]:
    """The smallest class holding `n_params` (the largest class for anything bigger)."""
    for label, size in SIZE_CLASSES.items():
        if n_params <= size:
            return label, size
    label = list(SIZE_CLASSES)[-1]
    return label, SIZE_CLASSES[label]


def train_tokens_per_s(gpu: Gpu, params: float, method: str = "lora") -> float:
    flops = TRAIN_FLOPS_PER_PARAM.get(method, 4) * params
    return MFU * gpu.peak_tflops * 1e12 / flops


def prefill_tokens_per_s(gpu: Gpu, params: float) -> float:
    return MFU * gpu.peak_tflops * 1e12 / (2 * params)


def decode_tokens_per_s(gpu: Gpu, params: float) -> float:
    bandwidth_bound = DECODE_STREAMS * BANDWIDTH_EFFICIENCY * gpu.bandwidth_gbs * 1e9 / (BYTES_PER_PARAM * params)
    return min(bandwidth_bound, prefill_tokens_per_s(gpu, params))


def throughput_table(method: str = "lora") -> dict[str, dict[str, int]]:
    """Training tokens/s by GPU and size class (what `tunesmith cost --json` shows under tables)."""
    return {g.name: {label: int(math.floor(train_tokens_per_s(g, size, method))) for label, size in SIZE_CLASSES.items()}
            for g in GPUS.values()}


#: Judge replies are short JSON objects; their length is taken from these typical replies (counted with
#: the judge's tokenizer), as `tunesmith.judge.prompts` asks for them.
TYPICAL_RUBRIC_REPLY = ('{"correctness": 4, "format": 5, "completeness": 4, "notes": "The answer matches the '
                        'reference in content and format, but it leaves out one detail the prompt asks for."}')
TYPICAL_PAIRWISE_REPLY = ('{"winner": "second", "reason": "The second response follows the required format and '
                          'matches the reference; the first adds text the prompt did not ask for."}')
#: Tokens per topic in the teacher's diversity-plan reply (a short phrase in a JSON list): an assumption.
TOKENS_PER_TOPIC = 8


def tables() -> dict[str, str]:
    """Every price or speed table a cost comes from, with its date."""
    from tunesmith.distill.prices import PRICES_AS_OF as TOKEN_PRICES
    from tunesmith.train.hosted.prices import PRICES_AS_OF as HOSTED_PRICES

    return {"teacher_and_judge_prices": f"{TOKEN_PRICES} (tunesmith/distill/prices.py)",
            "hosted_prices": f"{HOSTED_PRICES} (tunesmith/train/hosted/prices.py)",
            "gpu_prices": f"{GPU_PRICES_AS_OF} (tunesmith/cost_tables.py; each row names its source)",
            "gpu_throughput": f"datasheet peaks x MFU {MFU} (an assumption; tunesmith/cost_tables.py)",
            "cpu_throughput": CPU_SOURCE}


def usd_text(value: float | None) -> str:
    """Dollars as people read them: $12.34, and $0.0031 for amounts under a cent; "unknown" for None."""
    if value is None:
        return "unknown"
    return f"${value:,.4f}" if 0 < value < 0.01 else f"${value:,.2f}"


def money(price: float) -> str:
    """A price per 1M tokens or per hour as people write it: 0.15, 0.60, 10.00, 0.075."""
    return f"{price:.2f}" if price >= 0.1 or price == 0 else f"{price:g}"


def hours_text(hours: float) -> str:
    return f"{hours:,.2f}" if hours >= 0.1 else f"{hours:.2g}"
