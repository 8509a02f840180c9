"""Keep a terminal or log for fedllm's own lines: no library progress bars or deprecation chatter."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence FutureWarning/DeprecationWarning and transformers' logging and progress bars in this process."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
