"""The errors a user can cause (bad config, data or store); the CLI prints them without a traceback."""

from __future__ import annotations

from leanset.dedup.config import DedupError
from leanset.labeling.config import LabelingError
from leanset.pipelines.config import ConfigError
from leanset.pipelines.embed import EmbedError
from leanset.pipelines.engine import EngineError
from leanset.pipelines.limits import LimitError
from leanset.pipelines.sources import SourceError
from leanset.pipelines.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DedupError,
    SourceError,
    EmbedError,
    StoreError,
    LabelingError,
    EngineError,
    LimitError,
)
