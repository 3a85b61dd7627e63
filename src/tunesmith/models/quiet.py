"""Keep library chatter out of tunesmith's output: our own messages already say what is loading."""

from __future__ import annotations

import warnings


def quiet_transformers() -> None:
    """No per-tensor "Loading weights" bar from transformers (it shows one per model load, and
    `tunesmith run` loads several), and no deprecation warning that PEFT triggers inside transformers
    and a user cannot act on. Hub download bars stay on: a multi-GB download without progress looks hung."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_bars = not are_progress_bars_disabled()  # off already when HF_HUB_DISABLE_PROGRESS_BARS=1
    hf_logging.disable_progress_bar()
    if hub_bars:
        enable_progress_bars()  # disable_progress_bar() above also turned the hub's off
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
