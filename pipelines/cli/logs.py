"""How much of Prefect's, `datasets`' and leanset's logging reaches the console.

By default the console shows warnings and errors only (a run ends with its own summary) and no
progress bars but leanset's own; `-v` shows every INFO line (Prefect's flow and task runs, the
temporary server, leanset's stages) and the Hugging Face libraries' bars. Set
before Prefect or `datasets` is imported. Prefect's API still receives leanset's INFO lines, so
a flow run's logs in the Prefect UI are complete either way.
"""

from __future__ import annotations

import logging
import os


def configure(verbose: bool = False) -> None:
    """Console log levels for this process (and the processes it starts)."""
    level = "INFO" if verbose else "WARNING"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "leanset")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # leanset logs outside a flow run too (the "unchanged" check runs before Prefect starts)
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # Prefect's console handler; its loggers stay at INFO so run logs still reach the API
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    os.environ["DATASETS_VERBOSITY"] = level.lower()
    os.environ["TRANSFORMERS_VERBOSITY"] = level.lower()
    if not verbose:  # Hugging Face's own bars ("Loading weights"): leanset shows one per stage
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("leanset").setLevel(logging.INFO)  # Prefect's console handler filters
