"""The versioned store: one folder per dataset holding every version, its caches and its queue."""

from pipelines.store.versions import TABLES, Diff, Store, StoreConflict, StoreError

__all__ = ["TABLES", "Diff", "Store", "StoreConflict", "StoreError"]
