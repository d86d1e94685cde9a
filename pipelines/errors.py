"""The errors a user can cause (bad config, data or store); the CLI prints them without a traceback."""

from __future__ import annotations

from dedup.config import DedupError
from labeling.config import LabelingError
from pipelines.config import ConfigError
from pipelines.embed import EmbedError
from pipelines.engine import EngineError
from pipelines.sources import SourceError
from pipelines.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DedupError,
    SourceError,
    EmbedError,
    StoreError,
    LabelingError,
    EngineError,
)
