"""Candidates from visual words on real photo tiles: a crop, a rotation, a turn, a flip or an
overlay of a tile is among its nearest images by words, however far apart the embedding puts
them; the geometric check then decides."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageDraw

from leanset.dedup.config import DedupSettings
from leanset.dedup.geometry import ImageFeatures, image_features
from leanset.dedup.imagesig import ImageSignal
from leanset.dedup.stage import Signals, candidate_pairs, find_duplicates
from leanset.dedup.words import word_pairs
from tests.helpers import photo_tiles

N = 44


def _edits(tiles: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Planted copies, by the tile they copy."""
    over = Image.fromarray(tiles[20])
    draw = ImageDraw.Draw(over)
    draw.rectangle((70, 5, 122, 30), fill=255)
    draw.text((5, 110), "(c) CAPTION", fill=0)
    rotated = Image.fromarray(tiles[5]).resize((256, 256)).rotate(8, Image.Resampling.BICUBIC)
    return {
        0: tiles[0][15:115, 20:120],  # a crop of 78% of each side
        5: np.asarray(rotated)[28:228, 28:228],  # rotated 8 degrees, cropped inside
        9: np.rot90(tiles[9]).copy(),
        12: tiles[12][:, ::-1].copy(),
        20: np.asarray(over),
    }


@pytest.fixture(scope="module")
def planted() -> tuple[list[ImageFeatures | None], list[tuple[int, int]]]:
    """Features of N distinct tiles and of five edited copies after them; the true pairs."""
    tiles = photo_tiles(N, min_std=30)
    copies = _edits(tiles)
    feats: list[ImageFeatures | None] = [image_features(t) for t in tiles]
    feats += [image_features(c) for c in copies.values()]
    return feats, [(orig, N + k) for k, orig in enumerate(copies)]


def test_each_edited_copy_is_among_its_nearest_by_words(planted) -> None:
    feats, truth = planted
    found = word_pairs(feats, 3)
    pairs = set(zip(found.i.tolist(), found.j.tolist(), strict=True))
    assert [p for p in truth if p not in pairs] == []
    assert len(pairs) <= 3 * len(feats)  # bounded: k per image
    assert found.words > 0 and found.seconds > 0


def test_words_propose_only_for_the_images_asked(planted) -> None:
    feats, truth = planted
    asked = np.array([N + 2])  # only the turned copy is new
    found = word_pairs(feats, 2, queries=asked)
    assert len(found.i) <= 2 and (9, N + 2) in set(zip(found.i, found.j, strict=True))


def _table(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "position": np.arange(n),
            "source": [f"{i}.png" for i in range(n)],
            "split": ["train"] * n,
            "label": ["a"] * n,
            "content_hash": [f"{i:032x}" for i in range(n)],
            "size_bytes": np.zeros(n, dtype=np.int64),
            "error": [None] * n,
        },
        schema_overrides={"error": pl.Utf8},
    )


def test_copies_the_embedding_never_proposes_are_found_by_words_and_geometry(planted) -> None:
    """Unrelated embeddings (as when every image looks alike to the model): the embedding's
    neighbours are never the copies, so only visual words propose them; the check confirms the
    five copies and nothing else."""
    feats, truth = planted
    n = len(feats)
    emb = np.random.default_rng(3).normal(size=(n, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def source(rows: np.ndarray) -> list[ImageFeatures | None]:
        return [feats[r] for r in rows]

    settings = DedupSettings(confirm=["embedding", "geometry"])
    signals = Signals(features=source)
    cand = candidate_pairs(_table(n), emb, settings, signals)
    sent = cand.to_verify
    proposed = set(zip(cand.a[sent].tolist(), cand.b[sent].tolist(), strict=True))
    assert set(truth) <= proposed
    out = find_duplicates(_table(n), emb, settings, signals=signals)
    dropped = out.table.filter(pl.col("dedup_drop").is_not_null())
    assert sorted(dropped["sample_id"].to_list()) == [f"s{N + k:03d}" for k in range(5)]
    assert all(e.startswith("geometry: ") for e in dropped["dup_evidence"].to_list())
    verified = out.search["verified"]
    assert verified["word_pairs"] >= 5 and verified["word_seconds"] > 0
    assert verified["pairs"] <= 8 * n  # at most GEOMETRY_MAX_PER_IMAGE per image


def test_a_word_proposed_pair_is_verified_before_an_image_budget_of_hash_agreeing_ones() -> None:
    """Image 0 agrees in its hashes with GEOMETRY_MAX_PER_IMAGE + 1 others (tiles of one scene's
    background in many frames do) and is a visual-word neighbour of image 20 (its copy): the
    word pair is among the pairs verified."""
    from leanset.dedup.stage import GEOMETRY_MAX_PER_IMAGE, _Routed

    n = GEOMETRY_MAX_PER_IMAGE + 1
    a = np.zeros(n + 1, dtype=np.int64)
    b = np.append(np.arange(1, n + 1), 20)
    hashed = np.append(np.ones(n, dtype=bool), False)
    word = np.append(np.zeros(n, dtype=np.float32), 0.3)
    cos = np.full(n + 1, 0.8, dtype=np.float32)
    routed = _Routed(cos, np.full(n + 1, np.nan, np.float32), [[] for _ in a], hashed)
    chosen = routed.to_verify(a, b, word)
    assert n in chosen.tolist()
    assert len(chosen) == GEOMETRY_MAX_PER_IMAGE


def test_a_copy_only_the_embedding_proposes_is_verified_beside_an_image_budget_of_word_pairs() -> (
    None
):
    """Image 0 and its copy 1 are each named by 6 images' word lists (weak scores, no copy among
    them: as on the diverse trust set's rotate+jpeg eiffel tile) and image 0 has 2 nearer
    embedding neighbours: the copy, proposed by the embedding alone, is still verified."""
    from leanset.dedup.stage import _Routed

    a = np.array([0] * 6 + [1] * 6 + [0, 0, 0], dtype=np.int64)
    b = np.array([*range(2, 8), *range(8, 14), 14, 15, 1], dtype=np.int64)
    word = np.array([0.05] * 12 + [0.0] * 3, dtype=np.float32)
    cos = np.array([0.2] * 12 + [0.82, 0.81, 0.73], dtype=np.float32)
    none = np.zeros(len(a), dtype=bool)
    routed = _Routed(cos, np.full(len(a), np.nan, np.float32), [[] for _ in a], none)
    assert len(a) - 1 in routed.to_verify(a, b, word).tolist()


def _thumbnails(images: list[np.ndarray]) -> np.ndarray:
    """Area-averaged SIDE x SIDE grey thumbnails, mean-centred, of unit length."""
    from leanset.dedup.imagesig import SIDE

    small = [
        np.asarray(Image.fromarray(i).resize((SIDE, SIDE), Image.Resampling.BOX), np.float32)
        for i in images
    ]
    x = np.stack(small).reshape(len(images), -1)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_turned_copies_come_from_words_and_the_thumbnails_search_only_plain_and_mirrored() -> None:
    """The thumbnail route searches each thumbnail against the others and their mirrors only
    (2 N rows, not the 8 N of every quarter turn): a quarter-turned and a mirrored copy are
    still dropped by the geometric check, and the summary's search seconds include every
    candidate search."""
    from leanset.dedup.near import find_near_pairs_between

    tiles = photo_tiles(N, min_std=30)
    images = [*tiles, np.rot90(tiles[9]).copy(), np.rot90(tiles[30], 2).copy(), tiles[12][:, ::-1]]
    feats = [image_features(i) for i in images]
    n = len(images)
    emb = np.random.default_rng(3).normal(size=(n, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    corpus_rows: list[int] = []

    def between(q, c, t, opts):  # the real search; records how many rows it searched
        corpus_rows.append(len(c))
        return find_near_pairs_between(q, c, t, opts)

    signals = Signals(
        image=ImageSignal.of(_thumbnails(images)), features=lambda rows: [feats[r] for r in rows]
    )
    out = find_duplicates(_table(n), emb, DedupSettings(), signals=signals, search_between=between)
    assert corpus_rows == [2 * n]
    rows = {r["sample_id"]: r for r in out.table.iter_rows(named=True)}
    for k, orig in enumerate([9, 30, 12]):  # the turns by geometry; the mirror by any route
        assert rows[f"s{N + k:03d}"]["near_dup_of"] == f"s{orig:03d}"
    assert all("geometry: " in rows[f"s{N + k:03d}"]["dup_evidence"] for k in range(2))
    parts = out.search["candidate_seconds"]
    assert {"embedding", "thumbnails", "geometry_neighbours"} <= set(parts)
    assert out.search["seconds"] == pytest.approx(sum(parts.values()), abs=0.002)


def test_words_stay_rare_as_the_data_grows_and_only_images_sharing_a_word_are_scored(
    planted, monkeypatch
) -> None:
    """The vocabulary splits its k-means cells until a word holds about LEAF of the data's
    descriptors: twice the descriptors give about twice the words (not the same cells, each in
    twice the images), the same data gives the same words, and the search proposes no pair of
    images that share no word (the sparse product scores only those)."""
    from leanset.dedup import words

    monkeypatch.setattr(words, "BRANCH", 8)  # 64 k-means cells for the tiles' 20k descriptors
    feats, _ = planted
    desc = np.concatenate([f.plain.descriptors for f in feats if f is not None])
    half, whole = words.vocabulary(desc[::2]), words.vocabulary(desc)
    assert half[0].leaves > 8 * 64 and whole[0].leaves > 1.6 * half[0].leaves
    assert np.median(np.bincount(whole[1])[np.bincount(whole[1]) > 0]) <= words.LEAF
    again = words.vocabulary(desc)
    assert np.array_equal(again[1], whole[1])
    assert np.array_equal(whole[0].words(desc[:500]), whole[1][:500])
    found = word_pairs(feats, 3)
    vocab = whole[0]
    sets = [set(vocab.words(f.plain.descriptors).tolist()) for f in feats if f is not None]
    mirrored = [set(vocab.words(f.mirrored.descriptors).tolist()) for f in feats if f is not None]
    for i, j in zip(found.i.tolist(), found.j.tolist(), strict=True):
        assert sets[i] & sets[j] or mirrored[i] & sets[j] or mirrored[j] & sets[i]
