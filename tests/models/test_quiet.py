import warnings

from tunesmith.models.quiet import quiet_transformers


def test_quiet_transformers_hides_the_weight_bar_but_not_hub_downloads():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        quiet_transformers()
        assert not hf_logging.is_progress_bar_enabled()
        assert not are_progress_bars_disabled()  # a hub download still shows its progress
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            quiet_transformers()  # filters are inserted in front of "default"
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("something else", FutureWarning)
        assert [str(w.message) for w in caught] == ["something else"]
    finally:
        hf_logging.enable_progress_bar()


def test_quiet_transformers_respects_hub_bars_turned_off(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()  # as HF_HUB_DISABLE_PROGRESS_BARS=1 leaves them
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # enable_progress_bars() would warn when the env var forbids it
            quiet_transformers()
        assert are_progress_bars_disabled()
    finally:
        enable_progress_bars()
        hf_logging.enable_progress_bar()
