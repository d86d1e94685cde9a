"""`leanset.open_store`: a store's versions, decisions, diffs, exports and checks from Python."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from leanset.pipelines.cli.store import open_store as _open
from leanset.pipelines.store import Store
from leanset.pipelines.store.verify import Verification, verify_store
from leanset.pipelines.store.versions import Diff


@dataclass(frozen=True)
class StoreView:
    """A leanset store (the `store:` folder of a flow)."""

    store: Store

    @property
    def path(self) -> Path:
        return Path(self.store.root)

    def versions(self) -> list[int]:
        """The committed versions, oldest first."""
        return [m["version"] for m in self.store.manifests()]

    def manifest(self, version: int | None = None) -> dict[str, Any]:
        """What a version records (default: the latest)."""
        return self.store.manifest(version)

    def decisions(self, version: int | None = None) -> pl.DataFrame:
        """A version's decisions (default: the latest), as `leanset export --decisions` writes."""
        return self.store.read("decisions", version)

    def dataset(self, version: int | None = None) -> pl.DataFrame:
        """A version's cleaned dataset (default: the latest)."""
        return self.store.read("dataset", version)

    def diff(self, a: int, b: int) -> Diff:
        """Samples that entered or left the cleaned dataset, and labels that changed, a to b."""
        return self.store.diff(a, b)

    def export(
        self,
        out: str | Path,
        version: int | None = None,
        format: str = "parquet",
        decisions: bool = False,
    ) -> Path:
        """Write a version (default: the latest) as `leanset export` does: parquet, hf or
        imagefolder; `decisions=True` writes its decisions instead."""
        from leanset.pipelines.store.export import export_version

        return export_version(self.store, version, format, out, decisions)

    def verify(self) -> Verification:
        """Every stored file against its recorded checksum (`.ok`, `.findings`)."""
        return verify_store(self.store.root)


def open_store(path: str | Path) -> StoreView:
    """The store at `path` (an error naming the path when it holds no version)."""
    return StoreView(_open(str(path)))
