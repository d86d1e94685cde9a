"""The dedup stage: exact copies by hash; candidate pairs from each signal; the evidence that
confirms them; the greedy decision (no chains) → per-row duplicate columns.

Signals: the embedding (always, when near dedup is on) and, for images, grey thumbnails
(`dedup.imagesig`). Each proposes candidate pairs by a similarity search; a candidate is a
duplicate when a *route* of `dedup.confirm` accepts it:

* `embedding`: cosine at or above the threshold (`dedup.threshold`, calibrated on this data when
  `auto`);
* `pixels`: thumbnail correlation (mirror-invariant) above this data's own distinct-neighbour
  null (always calibrated);
* `hashes`: pHash and dHash both within a few bits (two independent image hashes agree; the bit
  budget is calibrated). A hash alone never accepts a pair: when images are alike, 64-bit hashes
  of distinct images agree within a few bits, and a flat image's hash says nothing. Agreeing
  hashes send a pair to the geometric check and are named beside the route that accepts it;
* `geometry` (images): local features agree under one affine map covering most of the smaller
  image (`dedup.geometry`): crops, turns, flips, overlays. It checks only the candidates no
  other route accepted: each image's `GEOMETRY_K` nearest neighbours by embedding above a loose
  floor (the calibration's null quantile `FLOOR_Q`), its nearest images by visual words (turned
  copies among them), thumbnail look-alikes plain or mirrored, and pairs whose hashes agree;
* `shingles` (text): character 5-gram containment >= 0.9 and Jaccard >= 0.5 (`dedup.lexical`),
  on candidates the embedding proposes generously (each text's 10 nearest at cosine >= 0.5).

`confirm: auto` runs every route the data has signals for; `embedding` only the first; a list
names the routes. The decisions table says which routes accepted each pair (`dup_evidence`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from leanset.dedup import calibrate
from leanset.dedup.calibrate import Calibration
from leanset.dedup.config import ROUTES, DedupError, DedupSettings
from leanset.dedup.exact import exact_representatives
from leanset.dedup.geometry import (
    GUIDED_BITS,
    GUIDED_FROM,
    MAX_OVERHANG,
    MIRROR_MARGIN,
    FeatureSource,
    verify_pairs,
)
from leanset.dedup.groups import DROP_REASONS, Edges, GroupColumns, resolve_groups
from leanset.dedup.imagesig import ImageSignal, pair_evidence
from leanset.dedup.lexical import MIN_CONTAINMENT, MIN_JACCARD, pair_overlap
from leanset.dedup.matrix import Rows, check_matrix, check_rows, cuda_available
from leanset.dedup.near import (
    NearPairs,
    SearchOptions,
    find_knn_pairs,
    find_near_pairs,
    find_near_pairs_between,
    sample_neighbours,
)
from leanset.dedup.words import DISTINCT, NO_WORDS, WordPairs, word_pairs

HASH_BITS = 10  # the hashes route: both pHash and dHash within at most this many of 64 bits
PIXEL_MARGIN = 0.35  # the pixels route: this share of the way from the pixel null to 1
EMBEDDING_MARGIN = 0.5  # threshold auto: this share of the way from the embedding null to 1
PIXEL_CANDIDATES = 0.8  # thumbnail pairs at least this correlated are checked by the hashes
MAX_BLOCK_GAP = 0.2  # pixels: the textured blocks' median NCC at most this far below the whole's
# (copies on the trust sets: <= 0.04; distinct textiles sharing a caption and logo: >= 0.46)
GEOMETRY_K = 3  # geometry candidates: each image's 3 nearest neighbours by embedding ...
FLOOR_Q = 0.5  # ... at or above this quantile of the calibration's null
WORDS_K = 3  # ... and its 3 nearest images by visual words that stand out (dedup.words)
GEOMETRY_MAX_PER_IMAGE = 10  # at most this many pairs per image are checked geometrically: an
# image that others' word lists name (6 word pairs, none a copy) and a calibration tile with a
# dozen natural siblings filled 8, cutting a copy only the embedding proposed (its first
# neighbour) and a copy's link to its original's sibling in test; 10 verifies 11-13% more pairs
TEXT_K, TEXT_FLOOR = 10, 0.5  # text candidates: each content's 10 nearest at cosine >= 0.5
RECALIBRATE_GROWTH = 0.1  # calibrations are kept from the parent until the data changes by 10%
RECALIBRATE_MIN = 1000  # ... and by at least this many contents
DROP_TYPE = pl.Enum([r for r in DROP_REASONS if r])  # dedup_drop's values
FETCH_PAIRS = 32768  # pairs scored per fetch of a matrix kept elsewhere (bounds what comes here)


@dataclass(frozen=True)
class Signals:
    """Second signals aligned with the sample table (rows of unreadable samples are zeros)."""

    image: ImageSignal | None = None
    text: sparse.csr_matrix | None = None  # character-shingle rows (dedup.lexical)
    features: FeatureSource | None = None  # local image features of rows (dedup.geometry)


@dataclass(frozen=True)
class PriorIndex:
    """What an earlier version found: its confirmed pairs (by content hash), the contents it
    searched, the key they were found under, and its calibration."""

    pairs: pl.DataFrame  # hash_a, hash_b, sim, evidence
    covered: frozenset[str]
    key: str
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass
class DedupResult:
    """The table with duplicate columns, the confirmed pairs, how the search ran, and why the
    thresholds are what they are."""

    table: pl.DataFrame
    pairs: pl.DataFrame
    search: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    index_key: str = ""


PAIR_SCHEMA = {"hash_a": pl.Utf8, "hash_b": pl.Utf8, "sim": pl.Float32, "evidence": pl.Utf8}
Search = Callable[[Any, float, SearchOptions], NearPairs]  # Rows: an engine's search takes both
SearchBetween = Callable[[Any, Any, float, SearchOptions], NearPairs]


def find_duplicates(
    table: pl.DataFrame,
    emb: Rows | None,
    settings: DedupSettings,
    *,
    signals: Signals | None = None,
    prior: PriorIndex | None = None,
    basis: str = "",
    search: Search | None = None,
    search_between: SearchBetween | None = None,
) -> DedupResult:
    """Add exact_dup_of, near_dup_of, dup_similarity, dup_evidence, dup_group, leak_of,
    label_conflict and dedup_drop.

    `basis` names what the vectors were made with (embedder and signal fingerprints): a prior's
    pairs are reused (only new contents are searched) when the basis and thresholds are equal.
    """
    if emb is not None:
        emb = _check_embeddings(table, emb)
    rep_of = exact_representatives(table) if settings.exact else _no_exact(table)
    reps = np.flatnonzero(rep_of == np.arange(len(rep_of)))
    routes = _routes(settings, emb, signals)
    cal = _Calibrator(settings, basis, prior, len(reps)).run(routes, emb, signals, reps)
    key = _index_key(basis, settings, routes, cal)
    usable = prior if prior is not None and prior.key == key and key else None
    found = _Finder(search, search_between, settings, table, reps, usable).run(
        routes, emb, signals, cal
    )
    cols = resolve_groups(table, rep_of, Edges(found.a, found.b, found.score), settings)
    evidence, contents = _row_evidence(rep_of, cols, found), len(reps)
    del rep_of, reps  # two N-long int64 arrays, freed before the N-long decision columns
    out = table.with_columns(_to_columns(table, cols, evidence))
    hashes = table["content_hash"]  # a column, never N Python strings
    pairs = pl.DataFrame(
        {
            "hash_a": hashes.gather(found.a),
            "hash_b": hashes.gather(found.b),
            "sim": found.score,
            "evidence": found.evidence,
        },
        schema=PAIR_SCHEMA,
    )
    record = _calibration_record(cal, contents)
    if record:
        record |= {"basis": basis, "setting": str(settings.threshold)}
    return DedupResult(out, pairs, found.info, record, key)


@dataclass(frozen=True)
class Candidates:
    """The candidate pairs (table rows, a < b) of a dedup run, before the geometric check: which
    a route other than geometry accepts, and which the geometric check would verify."""

    a: np.ndarray
    b: np.ndarray
    accepted: np.ndarray  # bool
    to_verify: np.ndarray  # bool


def candidate_pairs(
    table: pl.DataFrame, emb: Rows, settings: DedupSettings, signals: Signals | None = None
) -> Candidates:
    """The candidates `find_duplicates` would judge on this table (no prior): for diagnostics of
    what each signal proposes."""
    emb = _check_embeddings(table, emb)
    rep_of = exact_representatives(table) if settings.exact else _no_exact(table)
    reps = np.flatnonzero(rep_of == np.arange(len(rep_of)))
    routes = _routes(settings, emb, signals)
    cal = _Calibrator(settings, "", None, len(reps)).run(routes, emb, signals, reps)
    finder = _Finder(None, None, settings, table, reps, None)
    a, b, _ = finder.candidates(routes, emb, signals, cal)
    r = _route(a, b, routes, emb, _second(signals), cal)
    verify = np.zeros(len(a), dtype=bool)
    if "geometry" in routes:
        verify[r.to_verify(a, b, _word_score(a, b, finder.words))] = True
    return Candidates(a, b, ~np.isnan(r.score), verify)


def _check_embeddings(table: pl.DataFrame, emb: Rows) -> Rows:
    """One finite row per sample (unreadable samples have zero rows); a bad row names its sample."""

    def describe(r: int) -> str:
        row = table.row(r, named=True)
        return f"sample {row['sample_id']}" + (f" ({row['source']})" if row.get("source") else "")

    if not isinstance(emb, np.ndarray):
        return check_rows(emb, rows=table.height, describe=describe, error=DedupError)
    return check_matrix(emb, rows=table.height, describe=describe, error=DedupError)


def _no_exact(table: pl.DataFrame) -> np.ndarray:
    ok = table["error"].is_null().to_numpy()
    return np.where(ok, np.arange(table.height), -1)


def _routes(settings: DedupSettings, emb: Rows | None, signals: Signals | None) -> tuple[str, ...]:
    """The routes that run: the configured ones the data has signals for."""
    if not settings.near:
        return ()
    has = {"embedding": emb is not None and emb.shape[1] > 0}
    has["pixels"] = has["hashes"] = signals is not None and signals.image is not None
    has["shingles"] = has["embedding"] and signals is not None and signals.text is not None
    has["geometry"] = signals is not None and signals.features is not None
    wanted = (
        ROUTES
        if settings.confirm == "auto"
        else ("embedding",)
        if settings.confirm == "embedding"
        else tuple(settings.confirm)
    )
    return tuple(r for r in wanted if has[r])


def default_exact_max_rows() -> int:
    """Exact search up to 200k rows on CPU (~35 s on 2 cores); a GPU does 2M exactly in minutes."""
    return 2_000_000 if cuda_available() else 200_000


# ---------------------------------------------------------------- calibration


@dataclass
class _Thresholds:
    """The threshold of each signal's route, and the calibrations behind them."""

    embedding: float | None = None
    pixels: float | None = None
    hash_bits: int = 0
    floor: float | None = None  # geometry candidates: embedding neighbours at or above this
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    reused_from: dict[str, Any] | None = None


class _Calibrator:
    """Thresholds for the routes: set in flows.yaml, kept from the parent, or read off the data."""

    def __init__(self, settings: DedupSettings, basis: str, prior: PriorIndex | None, n: int):
        self.settings, self.basis, self.n = settings, basis, n
        self.parent = prior.calibration if prior is not None else {}

    def run(
        self,
        routes: tuple[str, ...],
        emb: Rows | None,
        signals: Signals | None,
        reps: np.ndarray,
    ) -> _Thresholds:
        out = _Thresholds()
        if self._reusable():
            out.embedding = self.parent.get("threshold")
            out.pixels = self.parent.get("pixels", {}).get("threshold")
            out.hash_bits = int(self.parent.get("hashes", {}).get("threshold", 0))
            out.floor = self.parent.get("candidate_floor")
            out.reused_from = self.parent
            return out
        if "embedding" in routes and emb is not None:
            nb = _neighbours(_take(emb, reps), calibrate.K, calibrate.SAMPLE)
            t = self.settings.threshold
            cal = (
                calibrate.null_quantile(nb, len(reps), EMBEDDING_MARGIN, "embedding")
                if t == "auto"
                else calibrate.fixed(float(t), nb, len(reps), "embedding")
            )
            out.embedding, out.calibrations["embedding"] = cal.threshold, cal
            out.floor = calibrate.null_floor(nb, FLOOR_Q) if "geometry" in routes else None
        if {"pixels", "hashes"} & set(routes) and signals is not None and signals.image is not None:
            self._image(routes, signals.image.take(reps), out)
        return out

    def _image(self, routes: tuple[str, ...], sig: ImageSignal, out: _Thresholds) -> None:
        """The pixel threshold and the hash bit budget, from the thumbnails' own neighbours."""
        nb = sample_neighbours(sig.thumbs, calibrate.K, calibrate.SAMPLE, mirror=sig.mirrored)
        if "pixels" in routes:
            cal = calibrate.null_quantile(nb, self.n, PIXEL_MARGIN, "pixels")
            out.pixels, out.calibrations["pixels"] = cal.threshold, cal
        if "hashes" in routes:
            null = nb.idx[:, calibrate.K_NULL - 1 : calibrate.K]
            rows = np.repeat(nb.rows, null.shape[1])[null.ravel() >= 0]
            ev = pair_evidence(sig, rows, null.ravel()[null.ravel() >= 0])
            worst = np.maximum(ev.phash, ev.dhash)[ev.comparable]
            cal = calibrate.hash_bits(worst, HASH_BITS)
            out.hash_bits, out.calibrations["hashes"] = int(cal.threshold), cal

    def _reusable(self) -> bool:
        """The parent's calibration, on the same basis and settings, of data that changed little
        (thresholds stay put between runs, and the parent's pairs stay reusable)."""
        p = self.parent
        if (
            not p
            or p.get("basis") != self.basis
            or p.get("setting") != str(self.settings.threshold)
        ):
            return False
        before = int(p.get("contents", 0))
        return before > 0 and abs(self.n - before) <= max(
            RECALIBRATE_GROWTH * before, RECALIBRATE_MIN
        )


def _index_key(basis: str, settings: DedupSettings, routes: tuple[str, ...], t: _Thresholds) -> str:
    """What makes a version's pairs reusable: the vectors, the settings and the thresholds."""
    if not routes:
        return ""
    return json.dumps(
        {
            "basis": basis,
            "routes": routes,
            "exact": settings.exact,
            "embedding": t.embedding,
            "pixels": t.pixels,
            "hash_bits": t.hash_bits,
            "floor": t.floor,
            "geometry": [GEOMETRY_K, WORDS_K, DISTINCT, GEOMETRY_MAX_PER_IMAGE, "words first"]
            if "geometry" in routes
            else None,
            "rules": [
                MAX_BLOCK_GAP,
                MAX_OVERHANG,
                MIRROR_MARGIN,
                GUIDED_FROM,
                GUIDED_BITS,
            ],  # pairs decided by other rules
        },
        sort_keys=True,
    )


def _calibration_record(t: _Thresholds, n: int) -> dict[str, Any]:
    """The manifest's `calibration`: the embedding's threshold and evidence, the pixels' too."""
    if t.reused_from is not None:
        return t.reused_from | {"reused": True}
    emb = t.calibrations.get("embedding")
    rec: dict[str, Any] = emb.to_dict() if emb is not None else {}
    if t.floor is not None:
        rec["candidate_floor"] = t.floor
    for name in ("pixels", "hashes"):
        if name in t.calibrations:
            rec[name] = t.calibrations[name].to_dict()
    return rec | {"contents": n} if rec else {}


# ---------------------------------------------------------------- candidates and evidence


@dataclass
class _Found:
    """Confirmed pairs (table rows), their score, the routes that accepted them, search info."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    evidence: list[str]
    info: dict[str, Any]


class _Finder:
    """Candidate pairs from each signal (all contents, or new ones against the rest), confirmed."""

    def __init__(
        self,
        search: Search | None,
        between: SearchBetween | None,
        settings: DedupSettings,
        table: pl.DataFrame,
        reps: np.ndarray,
        prior: PriorIndex | None,
    ):
        self.search: Search = search or find_near_pairs
        self.between: SearchBetween = between or find_near_pairs_between
        self.settings, self.prior, self.reps = settings, prior, reps
        self.hashes = table["content_hash"]  # a column: as Python strings, ~90 B per row
        self.new = self._new_mask() if prior is not None else np.ones(len(reps), dtype=bool)
        self.words = NO_WORDS

    def run(
        self,
        routes: tuple[str, ...],
        emb: Rows | None,
        signals: Signals | None,
        t: _Thresholds,
    ) -> _Found:
        a, b, info = self.candidates(routes, emb, signals, t)
        found = _confirm(a, b, routes, emb, _second(signals), t, self.words)
        return self._with_prior(found, info)

    def candidates(
        self,
        routes: tuple[str, ...],
        emb: Rows | None,
        signals: Signals | None,
        t: _Thresholds,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Every signal's candidate pairs, each unordered pair once, and how the search ran:
        `seconds` is every candidate search's but the visual words' (those are the geometric
        check's, in `verified`), `candidate_seconds` each search's."""
        info: dict[str, Any] = {"method": "none", "routes": list(routes)}
        cand: list[tuple[np.ndarray, np.ndarray]] = []
        clock = _Clock()
        if "embedding" in routes and emb is not None and t.embedding is not None:
            with clock("embedding"):
                a, b, info = self._pairs(emb, t.embedding, info)
            cand.append((a, b))
        image = signals.image if signals is not None else None
        if image is not None and ({"pixels", "hashes", "geometry"} & set(routes)):
            floor = min(PIXEL_CANDIDATES, t.pixels or PIXEL_CANDIDATES)
            with clock("thumbnails"):
                a, b, _ = self._pairs(image.thumbs, floor, {}, corpus=flips(image))
            cand.append((a, b))
        text = signals.text if signals is not None else None
        if text is not None and emb is not None and "shingles" in routes:
            with clock("text_neighbours"):
                cand.append(self._knn(emb, TEXT_K, TEXT_FLOOR))
        if "geometry" in routes and emb is not None and t.floor is not None:
            with clock("geometry_neighbours"):
                cand.append(self._knn(emb, GEOMETRY_K, t.floor))
        if "geometry" in routes and signals is not None and signals.features is not None:
            self.words = self._words(signals.features)
            cand.append((self.words.i, self.words.j))
        a, b = _unique_pairs(cand, len(self.hashes))
        info |= {"seconds": clock.total(), "candidate_seconds": clock.parts()}
        return a, b, info

    def _words(self, features: FeatureSource) -> WordPairs:
        """Each (new) image's WORDS_K nearest images by visual words, as table rows (every
        image's features are read: a copy may sit anywhere)."""
        start = time.perf_counter()
        feats = features(self.reps)
        read = time.perf_counter() - start
        found = word_pairs(feats, WORDS_K, queries=np.flatnonzero(self.new))
        return WordPairs(
            self.reps[found.i], self.reps[found.j], found.score, found.seconds, found.words, read
        )

    def _new_mask(self) -> np.ndarray:
        """Contents the prior did not search (without exact dedup a content's first row is old)."""
        assert self.prior is not None
        h = self.hashes.gather(self.reps)
        covered = pl.Series(sorted(self.prior.covered), dtype=h.dtype)
        old = h.is_in(covered).fill_null(False) & h.is_first_distinct()
        return np.asarray(~old.to_numpy(), dtype=bool)

    def _opts(self) -> SearchOptions:
        s = self.settings
        return SearchOptions(
            method=s.search, exact_max_rows=s.exact_max_rows or default_exact_max_rows()
        )

    def _pairs(
        self, x: Rows, t: float, info: dict[str, Any], corpus: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Rows (a, b) of pairs at >= t: among all contents, or the new ones against all."""
        reps = self.reps
        if corpus is None and not self.new.all():
            new, old = reps[self.new], reps[~self.new]
            own = self.search(_take(x, new), t, self._opts())
            cross = self.between(_take(x, new), _take(x, old), t, self._opts())
            a = np.concatenate([new[own.i], new[cross.i]])
            b = np.concatenate([new[own.j], old[cross.j]])
            return a, b, info | {"method": cross.method, **cross.params, **self._incremental()}
        if corpus is None:
            p = self.search(_take(x, reps), t, self._opts())
            return (
                reps[p.i],
                reps[p.j],
                info | {"method": p.method, **p.params, "incremental": False},
            )
        assert isinstance(x, np.ndarray)  # thumbnails: always here
        return self._pairs_against(x, corpus, t, info)

    def _pairs_against(
        self, x: np.ndarray, corpus: np.ndarray, t: float, info: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Pairs of (new) contents against `corpus`: the rows, stacked with transformed rows."""
        n = len(x)
        query = self.reps[self.new]
        pool = np.concatenate([self.reps + v * n for v in range(len(corpus) // n)])
        # every content a representative (no exact copies): the corpus itself, not a copy
        p = self.between(_take(x, query), _take(corpus, pool), t, self._opts())
        a, b = query[p.i], pool[p.j] % n
        keep = a != b
        return a[keep], b[keep], info

    def _knn(self, emb: Rows, k: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Each (new) content's k nearest contents at cosine >= floor."""
        reps = self.reps
        if self.new.all():  # every content is a query: kept elsewhere, its rows come here
            x = _take(emb, reps)
            p = find_knn_pairs(
                x if isinstance(x, np.ndarray) else x.dense(), k, floor, self._opts()
            )
            return reps[p.i], reps[p.j]
        nb = _neighbours(_take(emb, reps), k, 0, rows=np.flatnonzero(self.new))
        a, b = np.repeat(nb.rows, nb.idx.shape[1]), nb.idx.ravel()
        keep = (b >= 0) & (nb.sim.ravel() >= np.float32(floor))
        return reps[a[keep]], reps[b[keep]]

    def _incremental(self) -> dict[str, Any]:
        return {
            "incremental": True,
            "new_contents": int(self.new.sum()),
            "reused_contents": int((~self.new).sum()),
        }

    def _with_prior(self, found: _Found, info: dict[str, Any]) -> _Found:
        """Add the prior's confirmed pairs between contents it covered and that are still here."""
        found.info = info | found.info
        if self.prior is None:
            return found
        old = self.reps[~self.new]
        a, b, s, ev = _prior_edges(self.prior.pairs, self.hashes, old)
        found.info |= {"reused_pairs": len(a)}
        return _Found(
            np.concatenate([found.a, a]),
            np.concatenate([found.b, b]),
            np.concatenate([found.score, s]).astype(np.float32),
            found.evidence + ev,
            found.info,
        )


def _unique_pairs(
    parts: list[tuple[np.ndarray, np.ndarray]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each unordered pair once (a < b), sorted."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo * np.int64(n) + hi)
    return key // n, key % n


def flips(image: ImageSignal) -> np.ndarray:
    """The thumbnails and their mirrors: the thumbnail route's search corpus. Quarter turns are
    left to the visual words (ORB is rotation-invariant): searching them too made the corpus 4x
    larger, ~20 s of a 10k-image run, and found no copy the words missed (README, "Trusting the
    decisions")."""
    return np.concatenate([image.thumbs, image.mirrored])


class _Clock:
    """Seconds spent in named blocks (`with clock("name"):`), summed per name."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._name = ""
        self._start = 0.0

    def __call__(self, name: str) -> _Clock:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        spent = time.perf_counter() - self._start
        self._seconds[self._name] = self._seconds.get(self._name, 0.0) + spent

    def parts(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self._seconds.items()}

    def total(self) -> float:
        return round(sum(self._seconds.values()), 3)


_Second = tuple[ImageSignal | None, sparse.csr_matrix | None, FeatureSource | None]


def _second(signals: Signals | None) -> _Second:
    if signals is None:
        return None, None, None
    return signals.image, signals.text, signals.features


@dataclass
class _Routed:
    """Candidates as the routes other than geometry judged them."""

    cos: np.ndarray  # embedding cosine of each pair (1 without an embedding)
    score: np.ndarray  # the first accepting route's score; NaN where none accepted
    fired: list[list[str]]  # the routes that accepted each pair
    hashed: np.ndarray  # the pair's hashes agree (corroboration, never acceptance)

    def to_verify(self, a: np.ndarray, b: np.ndarray, word: np.ndarray) -> np.ndarray:
        """Indices of the pairs the geometric check verifies: none accepted them; visual-word
        neighbours first (by their similarity), then hash agreement, then by cosine; at most
        GEOMETRY_MAX_PER_IMAGE per image (on look-alike data the embedding's neighbours are
        look-alikes, the words' are copies; tiles of one scene's background in many frames agree
        in their hashes with a dozen others, which took the budget from a word-proposed copy)."""
        rank = np.where(word > 0, 3.0 + word, np.where(self.hashed, 2.0, self.cos))
        return _bounded(np.flatnonzero(np.isnan(self.score)), a, b, rank)


def _word_score(a: np.ndarray, b: np.ndarray, words: WordPairs) -> np.ndarray:
    """The visual-word similarity of each candidate pair (0 where words did not propose it)."""
    out = np.zeros(len(a), np.float32)
    if len(words.i) == 0 or len(a) == 0:
        return out
    n = int(max(a.max(), b.max(), words.i.max(), words.j.max())) + 1
    key = a.astype(np.int64) * n + b
    wkey = words.i.astype(np.int64) * n + words.j
    order = np.argsort(wkey)
    pos = np.clip(np.searchsorted(wkey[order], key), 0, len(wkey) - 1)
    hit = wkey[order][pos] == key
    out[hit] = words.score[order][pos][hit]
    return out


def _with_words(info: dict[str, Any], words: WordPairs) -> dict[str, Any]:
    """The check's cost with the visual-word search's: reading every image's features, the
    vocabulary and the search."""
    feature = info["feature_seconds"] + words.read_seconds
    total = info["seconds"] + words.read_seconds + words.seconds
    return info | {
        "feature_seconds": round(feature, 3),
        "word_seconds": round(words.seconds, 3),
        "word_pairs": len(words.i),
        "seconds": round(total, 3),
    }


def _route(
    a: np.ndarray,
    b: np.ndarray,
    routes: tuple[str, ...],
    emb: Rows | None,
    second: _Second,
    t: _Thresholds,
) -> _Routed:
    """The candidates each route other than geometry accepts, scored by the first that does."""
    image, text, _ = second
    cos = _pair_cosines(emb, a, b) if emb is not None else np.ones(len(a), np.float32)
    score = np.full(len(a), np.nan, dtype=np.float32)
    fired: list[list[str]] = [[] for _ in range(len(a))]
    checks, hashed = _route_checks(routes, cos, image, a, b, t)
    if text is not None and "shingles" in routes:
        jac, con = pair_overlap(text, a, b)
        checks["shingles"] = ((con >= MIN_CONTAINMENT) & (jac >= MIN_JACCARD), con)
    for name, (ok, value) in checks.items():
        first = ok & np.isnan(score)
        score[first] = value[first]
        for k in np.flatnonzero(ok).tolist():
            fired[k].append(name)
    for k in np.flatnonzero(hashed).tolist():
        fired[k].append("hashes")
    return _Routed(cos, score, fired, hashed)


def _confirm(
    a: np.ndarray,
    b: np.ndarray,
    routes: tuple[str, ...],
    emb: Rows | None,
    second: _Second,
    t: _Thresholds,
    words: WordPairs,
) -> _Found:
    """The candidates some route accepts, scored by the first route that does; what no route
    accepts, the geometric check verifies (agreeing hashes are named beside it, never alone)."""
    r = _route(a, b, routes, emb, second, t)
    score, fired, features = r.score, r.fired, second[2]
    info: dict[str, Any] = {}
    if "geometry" in routes and features is not None:
        todo = r.to_verify(a, b, _word_score(a, b, words))
        v = verify_pairs(a[todo], b[todo], features)
        score[todo[v.copy]] = r.cos[todo[v.copy]]
        for k, reason in zip(todo[v.copy].tolist(), np.array(v.reasons)[v.copy], strict=True):
            fired[k].append(str(reason))
        info["verified"] = _with_words(v.info, words)
    keep = ~np.isnan(score)
    idx = np.flatnonzero(keep)
    return _Found(a[keep], b[keep], score[keep], ["+".join(fired[k]) for k in idx], info)


def _bounded(todo: np.ndarray, a: np.ndarray, b: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The pairs to verify, best ranked first, at most GEOMETRY_MAX_PER_IMAGE per image."""
    order = todo[np.argsort(-rank[todo], kind="stable")]
    seen: dict[int, int] = {}
    out = []
    for k in order.tolist():
        x, y = int(a[k]), int(b[k])
        if seen.get(x, 0) < GEOMETRY_MAX_PER_IMAGE and seen.get(y, 0) < GEOMETRY_MAX_PER_IMAGE:
            seen[x], seen[y] = seen.get(x, 0) + 1, seen.get(y, 0) + 1
            out.append(k)
    return np.sort(np.array(out, dtype=np.int64))


def _route_checks(
    routes: tuple[str, ...],
    cos: np.ndarray,
    image: ImageSignal | None,
    a: np.ndarray,
    b: np.ndarray,
    t: _Thresholds,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Per route: which candidates it accepts, and its score on the similarity scale; and which
    pairs' hashes agree (they corroborate, and are verified early, but accept nothing alone)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hashed = np.zeros(len(a), dtype=bool)
    if "embedding" in routes and t.embedding is not None:
        out["embedding"] = (cos >= np.float32(t.embedding), cos)
    if image is None or not ({"pixels", "hashes"} & set(routes)):
        return out, hashed
    ev = pair_evidence(image, a, b)
    if "pixels" in routes and t.pixels is not None:
        spread = ev.block_ncc >= ev.ncc - MAX_BLOCK_GAP  # not a shared caption band and logo
        out["pixels"] = (ev.comparable & (ev.ncc >= np.float32(t.pixels)) & spread, ev.ncc)
    if "hashes" in routes and t.hash_bits >= 2:
        hashed = ev.comparable & (np.maximum(ev.phash, ev.dhash) <= t.hash_bits)
    return out, hashed


def _take(emb: Rows, rows: np.ndarray) -> Rows:
    """`emb[rows]` as a C-contiguous matrix; a view (no copy) when `rows` is one ascending run
    (a matrix kept elsewhere: taken there)."""
    if not isinstance(emb, np.ndarray):
        return emb.take(rows)
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
        return emb[int(rows[0]) : int(rows[-1]) + 1]
    return np.ascontiguousarray(emb[rows])


def _neighbours(x: Rows, k: int, n_sample: int, rows: np.ndarray | None = None) -> Any:
    """`sample_neighbours` of rows here or kept elsewhere (the same neighbours)."""
    if isinstance(x, np.ndarray):
        return sample_neighbours(x, k, n_sample, rows=rows)
    return x.neighbours(k, n_sample, rows=rows)


def _pair_cosines(emb: Rows, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 cosines of row pairs, a bounded number of pairs' rows at a time (a matrix kept
    elsewhere: they come here)."""
    parts = [np.zeros(0, np.float32)]
    for s in range(0, len(a), FETCH_PAIRS):  # both rows of every pair at once: N_pairs x D x 8 B
        rows = np.concatenate([a[s : s + FETCH_PAIRS], b[s : s + FETCH_PAIRS]])
        both = emb[rows] if isinstance(emb, np.ndarray) else emb.fetch(rows)
        k = both.shape[0] // 2
        parts.append(np.einsum("ij,ij->i", both[:k], both[k:]).astype(np.float32).clip(-1, 1))
    return np.concatenate(parts)


def _prior_edges(
    pairs: pl.DataFrame, hashes: pl.Series, old: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The prior's pairs whose two contents are still present, as table rows: one edge per pair
    of contents (without exact dedup the prior held a pair once per pair of rows, and pairs
    within one content, whose other rows are searched again as new)."""
    row_of = dict(zip(hashes.gather(old).to_list(), old.tolist(), strict=True))
    lo = pl.min_horizontal("hash_a", "hash_b")
    hi = pl.max_horizontal("hash_a", "hash_b")
    live = (
        pairs.filter(pl.col("hash_a").is_in(list(row_of)) & pl.col("hash_b").is_in(list(row_of)))
        .filter(pl.col("hash_a") != pl.col("hash_b"))
        .with_columns(lo.alias("hash_a"), hi.alias("hash_b"))
        .unique(subset=["hash_a", "hash_b"], keep="first", maintain_order=True)
    )
    a = np.array([row_of[h] for h in live["hash_a"].to_list()], dtype=np.int64)
    b = np.array([row_of[h] for h in live["hash_b"].to_list()], dtype=np.int64)
    evidence = live["evidence"].to_list() if "evidence" in live.columns else ["embedding"] * len(a)
    return a, b, live["sim"].to_numpy().astype(np.float32), [e or "" for e in evidence]


# ---------------------------------------------------------------- per-row columns


def _row_evidence(rep_of: np.ndarray, cols: GroupColumns, found: _Found) -> list[str | None]:
    """Per marked row: `exact`, or the routes that accepted the pair joining its content to its
    reference's (pairs join contents: their representative rows)."""
    by_pair = {
        (min(x, y), max(x, y)): e
        for x, y, e in zip(found.a.tolist(), found.b.tolist(), found.evidence, strict=True)
    }
    out: list[str | None] = [None] * len(cols.rows)
    for k in np.flatnonzero(cols.ref >= 0).tolist():
        x, y = int(rep_of[cols.rows[k]]), int(rep_of[cols.ref[k]])
        out[k] = "exact" if x == y else by_pair.get((min(x, y), max(x, y)))
    return out


def _to_columns(
    table: pl.DataFrame, cols: GroupColumns, evidence: list[str | None]
) -> list[pl.Series]:
    """The decision columns: nulls (and False) everywhere but at the marked rows. The string
    columns are enums (1-4 bytes a row; a string column takes 16 even where null): the sample
    ids a row points to, its evidence, its drop reason; the version stores them as strings."""
    ids, hashes, n = table["sample_id"].cast(pl.Utf8), table["content_hash"], table.height
    has_ref = cols.ref >= 0
    same = np.zeros(len(cols.rows), dtype=bool)
    same[has_ref] = (
        hashes.gather(cols.rows[has_ref]).eq_missing(hashes.gather(cols.ref[has_ref])).to_numpy()
    )
    named = np.concatenate([cols.ref, cols.group, cols.leak_of])
    id_type = _enum(ids.gather(np.unique(named[named >= 0])))

    def ids_where(mask: np.ndarray, idx: np.ndarray) -> pl.Series:
        return _spread(n, cols.rows[mask], ids.gather(idx[mask]).cast(id_type))

    conflict = np.zeros(n, dtype=bool)
    conflict[cols.rows[cols.conflict]] = True
    reasons = pl.Series([DROP_REASONS[c] for c in cols.drop.tolist()], dtype=DROP_TYPE)
    said = pl.Series(evidence, dtype=pl.Utf8)
    return [
        ids_where(same, cols.ref).alias("exact_dup_of"),
        ids_where(has_ref & ~same, cols.ref).alias("near_dup_of"),
        _spread(n, cols.rows, pl.Series(cols.sim)).fill_nan(None).alias("dup_similarity"),
        _spread(n, cols.rows, said.cast(_enum(said))).alias("dup_evidence"),
        ids_where(cols.group >= 0, cols.group).alias("dup_group"),
        ids_where(cols.leak_of >= 0, cols.leak_of).alias("leak_of"),
        pl.Series("label_conflict", conflict, dtype=pl.Boolean),
        _spread(n, cols.rows, reasons).alias("dedup_drop"),
    ]


def _enum(values: pl.Series) -> pl.Enum:
    """An enum of the distinct values, in string order (so it sorts as the strings do)."""
    return pl.Enum(values.drop_nulls().unique().sort())


def _spread(n: int, rows: np.ndarray, values: pl.Series) -> pl.Series:
    """A column of n nulls holding `values` at `rows`."""
    return pl.Series(dtype=values.dtype).extend_constant(None, n).scatter(rows, values)
