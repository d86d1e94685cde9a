"""leanset: make ML datasets cheaper to train on.

The stage packages live in `leanset.dedup` and `leanset.labeling`, orchestration and I/O in
`leanset.pipelines`; `leanset` itself is the public API for Python and notebooks.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leanset")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
