"""The store's errors: each names the store, version or file, and says what to do."""

from __future__ import annotations


class StoreError(ValueError):
    """The store cannot be used as asked; the message names the path or version."""


class StoreConflict(StoreError):
    """Another run committed a version on the same parent first."""


class StoreFull(StoreError):
    """The store's disk is full: nothing was committed (never retried)."""


class IntegrityError(StoreError):
    """A stored file does not match what its manifest recorded (the message names it)."""
