"""The version writer hands enum columns to Delta as dictionaries and stores what polars'
`write_delta` of the string columns stored: the same Delta schema, rows, order and statistics."""

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from leanset.pipelines.store import Store
from leanset.pipelines.store.versions import as_stored, stored_stream

REASONS = pl.Enum(["", "exact_dup", "near_dup", "leak"])


def _part(n: int, seed: int) -> pl.DataFrame:
    """Rows with every kind of column a version stores, enums with nulls included."""
    i = [seed * n + k for k in range(n)]
    return pl.DataFrame(
        {
            "sample_id": [f"s{k}" for k in i],
            "kept": [k % 3 != 0 for k in i],
            "drop_reason": [["", "exact_dup", None, "leak"][k % 4] for k in i],
            "split": [["train", "test"][k % 2] for k in i],
            "dup_similarity": [None if k % 5 else k / 7 for k in i],
            "image_bytes": [bytes([k % 256]) * (k % 7) if k % 2 else None for k in i],
            "embedding": [[float(k), 0.5] for k in i],
            "meta": [{"x": k, "y": str(k)} for k in i],
        },
        schema={
            "sample_id": pl.Utf8,
            "kept": pl.Boolean,
            "drop_reason": REASONS,
            "split": pl.Categorical,
            "dup_similarity": pl.Float64,
            "image_bytes": pl.Binary,
            "embedding": pl.List(pl.Float32),
            "meta": pl.Struct({"x": pl.Int64, "y": pl.Utf8}),
        },
    )


def _stats(table: DeltaTable) -> dict[str, list[object]]:
    actions = table.get_add_actions(flatten=True)
    keep = ("num_records", "null_count.", "min.", "max.")
    return {c: actions.column(c).to_pylist() for c in actions.schema.names if c.startswith(keep)}


@pytest.mark.parametrize("parts", [0, 1, 4])
def test_a_version_stores_what_polars_stored_from_the_string_columns(
    tmp_path: Path, parts: int
) -> None:
    """Zero rows, one chunk, and four chunks (the Delta writer reorders batches: one must reach
    it) give the reference's Delta schema, statistics, and rows in order."""
    frame = pl.concat([_part(20_000, s) for s in range(parts)] or [_part(0, 0)], rechunk=False)
    ref = tmp_path / "reference"
    as_stored(frame).write_delta(
        ref, mode="overwrite", delta_write_options={"schema_mode": "overwrite"}
    )
    store = Store(tmp_path / "store")
    store.commit(frame.select("sample_id"), frame, {"counts": {}}, None)
    again = frame.reverse()  # a second version overwrites the first
    store.commit(again.select("sample_id"), again, {"counts": {}}, 1)

    stored = DeltaTable(store.storage.table_uri("decisions"))
    assert stored.schema().to_json() == DeltaTable(ref).schema().to_json()
    assert store.read("decisions", 1).equals(pl.read_delta(str(ref)))
    assert store.read("decisions", 2).equals(as_stored(again))
    assert store.read("decisions", 2).schema["drop_reason"] == pl.Utf8
    first = DeltaTable(
        store.storage.table_uri("decisions"), version=store.manifest(1)["tables"]["decisions"]
    )
    assert _stats(first) == _stats(DeltaTable(ref))


def test_the_writer_gets_enum_columns_as_dictionaries_in_one_batch() -> None:
    """No enum column becomes a string column on its way to Delta (16 bytes a row): its rows stay
    1-4 byte indices into a dictionary of plain strings."""
    frame = pl.concat([_part(1000, s) for s in range(3)], rechunk=False)
    batches = list(stored_stream(frame))
    assert len(batches) == 1 and batches[0].num_rows == 3000
    for name in ("drop_reason", "split"):
        kind = batches[0].schema.field(name).type
        assert pa.types.is_dictionary(kind) and kind.value_type == pa.string(), name
        assert kind.index_type.bit_width <= 32, name
        assert batches[0].column(name).cast(pa.string()).to_pylist() == frame[name].to_list()
    assert batches[0].schema.field("sample_id").type == pa.string_view()


def test_a_column_delta_cannot_store_is_named_and_no_version_is_committed(tmp_path: Path) -> None:
    """An all-null column without a type is refused, naming it; no version is committed."""
    frame = _part(10, 0).with_columns(pl.lit(None).alias("note"))
    store = Store(tmp_path / "store")
    with pytest.raises(TypeError, match=r"\['note'\]"):
        store.commit(frame.select("sample_id"), frame, {"counts": {}}, None)
    assert store.latest() is None
