"""Every path under a store, named in one place (README's "The store" section draws the same tree).

```
STORE/
  manifests/v000001.json        the commit point of each version
  dataset/  decisions/          Delta tables (a manifest names their Delta versions)
  index/pairs-v000001-<t>.parquet   each version's near-duplicate pairs
  cache/embeddings/<fp>/shard-*.npz content-addressed embedding shards
  cache/file-hashes.parquet     content hashes of image files by (path, size, mtime)
  labeling/queue.parquet  labeling/answers.parquet  labeling/.lock
  labeling/label-studio.json  labeling/pulls/pull-<time>.json   Label Studio push/pull state
  reports/v000001.html          a static report per version
  cost/calibration.json         the last `leanset calibrate` measurement (training throughput)
  promotions/p000001.json       who promoted which version and why (append-only, one file each)
  locks/labeling.lease          a store in a bucket: held while the labeling queue is rewritten
  vectors/v000001-<t>-000.npz    raw vectors of precomputed embeddings, shared between versions
  after-commit/v000001-<t>.queue.parquet  rows a version's queue fill adds (written before its manifest)
  after-commit/v000001.done.json          which post-commit steps of a version are done (written last)
```
The rewritable files (labeling tables and sync state, the file-hash cache, reports, done records)
each have a checksum sidecar `X.sum` beside them (`pipelines/store/sealed.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLES = ("dataset", "decisions")
EMBEDDINGS = "cache/embeddings"  # the embedding cache, relative to the store
FILE_HASHES = "cache/file-hashes.parquet"
PROMOTIONS = "promotions"
LABELING_LEASE = (
    "locks/labeling.lease"  # a bucket store: held while the labeling queue is rewritten
)


@dataclass(frozen=True)
class StoreLayout:
    """The paths of one store folder."""

    root: Path

    @classmethod
    def of(cls, root: str | Path) -> StoreLayout:
        """The layout of the store at `root`."""
        return cls(Path(root))

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def manifest(self, version: int) -> Path:
        """The manifest of a version: its commit point."""
        return self.manifests / f"v{version:06d}.json"

    def table(self, name: str) -> Path:
        """A Delta table folder (`dataset` or `decisions`)."""
        return self.root / name

    @property
    def index(self) -> Path:
        return self.root / "index"

    def pairs_file(self, version: int, token: str) -> str:
        """A version's near-pair index, relative to the store root (as manifests record it)."""
        return f"index/pairs-v{version:06d}-{token[:8]}.parquet"

    @property
    def embeddings(self) -> Path:
        """The embedding cache: one folder per embedder fingerprint."""
        return self.root / EMBEDDINGS

    @property
    def file_hashes(self) -> Path:
        return self.root / FILE_HASHES

    @property
    def labeling(self) -> Path:
        return self.root / "labeling"

    @property
    def queue(self) -> Path:
        return self.labeling / "queue.parquet"

    @property
    def answers(self) -> Path:
        return self.labeling / "answers.parquet"

    @property
    def labeling_lock(self) -> Path:
        return self.labeling / ".lock"

    @property
    def label_studio_sync(self) -> Path:
        """Which Label Studio projects the queue was pushed to, and how far each was pulled."""
        return self.labeling / "label-studio.json"

    def pull_file(self, stamp: str) -> Path:
        """The tasks one `leanset queue pull` fetched (what its answers were recorded from)."""
        return self.labeling / "pulls" / f"pull-{stamp}.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report(self, version: int) -> Path:
        """A version's static HTML report."""
        return self.reports / f"v{version:06d}.html"

    @property
    def calibration(self) -> Path:
        """The training throughput `leanset calibrate` measured last (read by the next run)."""
        return self.root / "cost" / "calibration.json"

    @property
    def promotions(self) -> Path:
        return self.root / PROMOTIONS

    def promotion(self, number: int) -> Path:
        """The n-th promotion record (created exclusively; never rewritten)."""
        return self.promotions / f"p{number:06d}.json"

    @property
    def vectors(self) -> Path:
        """Content-addressed raw vectors of cleaned datasets of precomputed embeddings."""
        return self.root / "vectors"

    def vector_shard(self, version: int, token: str, k: int) -> str:
        """The k-th vector shard a version wrote, relative to the store root."""
        return f"vectors/v{version:06d}-{token[:8]}-{k:03d}.npz"

    @property
    def after_commit(self) -> Path:
        """What the steps after a commit (queue fill, report) need and have done, per version."""
        return self.root / "after-commit"

    def queue_rows_file(self, version: int, token: str) -> str:
        """The rows a version adds to the labeling queue, relative to the store root."""
        return f"after-commit/v{version:06d}-{token[:8]}.queue.parquet"

    def entries(self) -> tuple[str, ...]:
        """The names a store folder holds at its top (one of them marks a folder as a store)."""
        tops = [self.manifests, self.index, self.embeddings, self.labeling, self.reports]
        tops += [self.table(t) for t in TABLES] + [self.after_commit, self.vectors]
        tops += [self.calibration.parent, self.promotions]
        return tuple(p.relative_to(self.root).parts[0] for p in tops)

    def sample_files(self) -> list[Path]:
        """One example of each kind of file a store writes (to test a source pattern against)."""
        part = "part-00000-00000000-0000-0000-0000-000000000000-c000.snappy.parquet"
        return [
            *(self.table(t) / part for t in TABLES),
            self.root / self.pairs_file(1, "0" * 8),
            self.root / self.queue_rows_file(1, "0" * 8),
            self.root / self.vector_shard(1, "0" * 8, 0),
            self.embeddings / "0" / "shard-0.npz",
            self.file_hashes,
            self.queue,
            self.answers,
            self.manifest(1),
            self.completion(1),
            self.report(1),
            self.calibration,
            self.promotion(1),
        ]

    def completion(self, version: int) -> Path:
        """The record of a version's finished post-commit steps (rewritten after each step)."""
        return self.after_commit / f"v{version:06d}.done.json"
