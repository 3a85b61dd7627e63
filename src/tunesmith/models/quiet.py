"""Keep library chatter out of tunesmith's output: our own messages already say what is loading."""

from __future__ import annotations

import warnings


def quiet_transformers() -> None:
    """No per-tensor "Loading weights" bar from transformers (it printed one per model load, several
    per `tunesmith run`), and no deprecation warning that TRL triggers inside transformers and a user
    cannot act on. Hub download bars stay on: a multi-GB download without progress looks hung."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    enable_progress_bars()  # disable_progress_bar() above also turned the hub's off
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
