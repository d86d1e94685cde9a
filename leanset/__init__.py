"""leanset: make ML datasets cheaper to train on.

    import leanset
    result = leanset.clean(df, label="label", embeddings=vectors)
    result.kept()  # the kept rows, in the input's own type

`clean` runs the same core as `leanset run` (no Prefect server), `run` runs a flow of a
flows.yaml, `open_store` reads a store's versions. The stage packages live in `leanset.dedup`
and `leanset.labeling`, orchestration and I/O in `leanset.pipelines`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leanset.api import clean, run
    from leanset.result import Result
    from leanset.store import StoreView, open_store

try:
    __version__ = version("leanset")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# imported on first use: the `leanset` command imports this package and must start fast
_LAZY = {
    "clean": "leanset.api",
    "run": "leanset.api",
    "Result": "leanset.result",
    "open_store": "leanset.store",
    "StoreView": "leanset.store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leanset' has no attribute {name!r}")


__all__ = ["Result", "StoreView", "__version__", "clean", "open_store", "run"]
