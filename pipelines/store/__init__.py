"""The versioned store: one folder per dataset holding every version, its caches and its queue."""

from leanset.pipelines.store.versions import (
    TABLES,
    Diff,
    IntegrityError,
    Store,
    StoreConflict,
    StoreError,
    StoreFull,
)

__all__ = [
    "TABLES",
    "Diff",
    "IntegrityError",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoreFull",
]
