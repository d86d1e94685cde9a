"""`leanset run` with its store in a bucket (moto's real S3 server, started here): the same
decisions as on a folder, caches and queue in the bucket, incremental runs, racing runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from leanset.pipelines.config import ConfigError, load_flow
from leanset.pipelines.core import run_core
from leanset.pipelines.store import Store
from leanset.pipelines.store.queue import read_queue
from leanset.pipelines.store.verify import verify_store
from tests import s3_server
from tests.helpers import make_imagefolder, pixel_flow_body, write_flows, write_png
from tests.s3_server import S3Server
from tests.test_labeling_flow import DIGITS, digits  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server.serving() as server:
        yield server


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's bucket mirrors live under its own folder (never the user's cache)."""
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-1"))


def _decisions(store: Store) -> pl.DataFrame:
    return store.read("decisions").drop("first_seen", strict=False).sort("sample_id")


def _flows(tmp_path: Path, url: str, options: dict[str, str], **body: object) -> Path:
    local = pixel_flow_body(**body)
    bucket = pixel_flow_body(store=url, storage_options=options, **body)
    return write_flows(tmp_path, local=local, bucket=bucket)


def test_a_run_on_a_bucket_store_decides_as_on_a_folder_and_reruns_incrementally(
    s3, tmp_path, monkeypatch
):
    make_imagefolder(tmp_path / "images")
    url = f"s3://{s3.bucket()}/stores/photos"
    config = _flows(tmp_path, url, s3.options)
    local, bucket = (load_flow(config, name) for name in ("local", "bucket"))
    run_core(local)
    first = run_core(bucket)
    assert first.summary.version == 1 and first.summary.report == f"{url}/reports/v000001.html"
    remote = Store(url, s3.options)
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    assert remote.manifest()["embed"]["computed"] > 0
    names = remote.storage.list("")
    assert any(n.startswith("cache/embeddings/") for n in names)
    for name in ("cache/file-hashes.parquet", "after-commit/v000001.done.json"):
        assert name in names and f"{name}.sum" in names
    assert not (tmp_path / "stores").exists()  # nothing of the bucket store went to a folder

    again = run_core(bucket)
    assert again.summary.unchanged and [m["version"] for m in remote.manifests()] == [1]

    for k in range(3):  # new files: only they are embedded
        write_png(tmp_path / f"images/train/a/new{k}.png", np.full((16, 16), 40 * k + 10))
    assert run_core(bucket).summary.version == 2
    assert remote.manifest(2)["embed"]["computed"] == 3

    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-2"))  # another machine
    write_png(tmp_path / "images/train/b/later.png", np.full((16, 16), 200))
    assert run_core(bucket).summary.version == 3
    assert remote.manifest(3)["embed"]["computed"] == 1  # the bucket's shards were pulled
    run_core(local)
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    assert verify_store(url, s3.options).ok


def test_the_labeling_queue_of_a_bucket_store_fills_as_a_folders(
    s3,
    tmp_path,
    digits,  # noqa: F811
):
    url = f"s3://{s3.bucket()}/digits"
    config = write_flows(
        tmp_path, local=DIGITS, bucket=DIGITS | {"store": url, "storage_options": s3.options}
    )
    local, bucket = (load_flow(config, name) for name in ("local", "bucket"))
    run_core(local)
    run_core(bucket)
    remote = Store(url, s3.options)
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    with remote.labeling() as root:
        queue = read_queue(root)
    expected = read_queue(tmp_path / "store")
    assert queue.height == expected.height > 0
    cols = ["sample_id", "reason", "status", "version"]
    assert queue.select(cols).sort("sample_id").equals(expected.select(cols).sort("sample_id"))
    assert "locks/labeling.lease" not in remote.storage.list("locks")  # released
    assert remote.manifest()["post_commit"]["steps"] == ["queue", "report"]
    done = json.loads(remote.storage.read("after-commit/v000001.done.json"))
    assert set(done["steps"]) == {"queue", "report"}


def test_storage_options_are_checked_like_every_key(s3, tmp_path):
    url = f"s3://{s3.bucket()}/s"
    config = write_flows(
        tmp_path,
        ok=pixel_flow_body(store=url, storage_options={"aws_region": "us-east-1", "x": 1} | {}),
    )
    with pytest.raises(ConfigError, match=r"'ok': storage_options: cannot open it .*'x'"):
        load_flow(config, "ok")
    config = write_flows(tmp_path, f=pixel_flow_body(storage_options={"aws_region": "eu"}))
    with pytest.raises(ConfigError, match=r"'f': storage_options: applies to s3://.* URLs only"):
        load_flow(config, "f")
    config = write_flows(tmp_path, f=pixel_flow_body(store=url, storage_options=["a"]))
    with pytest.raises(ConfigError, match=r"'f': storage_options: expected a mapping"):
        load_flow(config, "f")
    config = write_flows(tmp_path, f=pixel_flow_body(store=url, storage_options={"k": {}}))
    with pytest.raises(ConfigError, match=r"'f': storage_options.k: expected a string"):
        load_flow(config, "f")
    settings = load_flow(write_flows(tmp_path, f=pixel_flow_body(store=url, **_opts(s3))), "f")
    assert settings.storage_options == s3.options
    assert "storage_options" not in settings.to_record()  # credentials stay out of manifests


def _opts(s3: S3Server) -> dict[str, object]:
    return {"storage_options": s3.options}


@pytest.mark.slow
def test_racing_runs_on_a_bucket_store_make_one_version_per_parent(s3, tmp_path):
    make_imagefolder(tmp_path / "images")
    url = f"s3://{s3.bucket()}/race"
    config = write_flows(tmp_path, f=pixel_flow_body(store=url, **_opts(s3)))
    cmd = [sys.executable, "-m", "leanset", "run", str(config), "--flow", "f"]
    for _ in range(2):
        runs = [
            subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(3)
        ]
        outs = [(p.wait(timeout=600), p.stdout.read().decode()) for p in runs]  # type: ignore[union-attr]
        assert any(rc == 0 for rc, _ in outs), outs
        write_png(tmp_path / "images/train/a/changed.png", np.full((16, 16), len(outs)))
    store = Store(url, s3.options)
    parents = [m["parent"] for m in store.manifests()]
    assert len(parents) == len(set(parents))  # one version per parent
    assert verify_store(url, s3.options).ok


def _upload(folder: Path, url: str, options: dict[str, str]) -> None:
    """Copy a local folder under a bucket prefix (what a user's `aws s3 sync` would do)."""
    from leanset.pipelines.store.storage import ObjectStorage

    bucket = ObjectStorage(url, options)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        bucket.write(path.relative_to(folder).as_posix(), path.read_bytes())


def test_an_image_source_in_a_bucket_decides_as_the_same_folder_on_disk(s3, tmp_path):
    make_imagefolder(tmp_path / "images")
    name = s3.bucket()
    _upload(tmp_path / "images", f"s3://{name}/data/images", s3.options)
    source = {"type": "imagefolder", "path": f"s3://{name}/data/images", **_opts(s3)}
    bucket = pixel_flow_body(source=source, store=f"s3://{name}/store", **_opts(s3))
    config = write_flows(tmp_path, local=pixel_flow_body(), bucket=bucket)
    run_core(load_flow(config, "local"))
    run_core(load_flow(config, "bucket"))
    remote = Store(f"s3://{name}/store", s3.options)
    assert _decisions(remote).equals(_decisions(Store(tmp_path / "store")))
    write_png(tmp_path / "images/train/a/extra.png", np.full((16, 16), 99))
    _upload(tmp_path / "images", f"s3://{name}/data/images", s3.options)
    assert run_core(load_flow(config, "bucket")).summary.version == 2
    assert remote.manifest(2)["embed"]["computed"] == 1


def test_parquet_files_in_a_bucket_decide_as_the_same_files_on_disk(
    s3,
    tmp_path,
    digits,  # noqa: F811
):
    name = s3.bucket()
    _upload(tmp_path, f"s3://{name}/tables", s3.options)  # digits.parquet (and flows.yaml)
    files = {"data_files": [f"s3://{name}/tables/*.parquet"], **_opts(s3)}
    body = DIGITS | {"active_learning": None, "label_noise": None}
    bucket = body | {"source": DIGITS["source"] | files, "store": f"s3://{name}/s", **_opts(s3)}
    config = write_flows(tmp_path, local=body, bucket=bucket)
    run_core(load_flow(config, "local"))
    run_core(load_flow(config, "bucket"))
    remote = Store(f"s3://{name}/s", s3.options)
    keys = ["sample_id", "kept", "drop_reason", "label"]
    local = Store(tmp_path / "store").read("decisions").select(keys).sort("sample_id")
    assert remote.read("decisions").select(keys).sort("sample_id").equals(local)
    assert (
        remote.read("dataset")
        .sort("sample_id")
        .equals(Store(tmp_path / "store").read("dataset").sort("sample_id"))
    )


def test_queue_export_and_gc_on_a_bucket_store(
    s3,
    tmp_path,
    monkeypatch,
    capsys,
    digits,  # noqa: F811
):
    from leanset.pipelines.cli import main

    for key, value in s3.options.items():  # the CLI reads credentials from the environment
        monkeypatch.setenv(key, value)
    url = f"s3://{s3.bucket()}/digits"
    config = write_flows(tmp_path, bucket=DIGITS | {"store": url})
    for threshold in ("0.995", "0.99", "0.98"):
        run_core(load_flow(config, "bucket", [f"dedup.threshold={threshold}"]))
    store = Store(url)
    assert [m["version"] for m in store.manifests()] == [1, 2, 3]

    capsys.readouterr()
    assert main(["queue", "show", url]) == 0
    assert "queued" in capsys.readouterr().out
    out = tmp_path / "tasks.json"
    assert main(["queue", "export", url, "--out", str(out)]) == 0
    tasks = json.loads(out.read_text())
    with store.labeling() as root:
        queue = read_queue(root)
    assert len(tasks) == queue.height and set(queue["status"]) == {"exported"}  # pushed back

    capsys.readouterr()
    assert main(["report", url]) == 0  # a local copy of the bucket's report, to open
    shown = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown.read_bytes() == store.storage.read("reports/v000003.html")

    exported = tmp_path / "v3.parquet"
    assert main(["export", url, "--format", "parquet", "--out", str(exported)]) == 0
    assert pl.read_parquet(exported).height == store.manifest(3)["counts"]["kept"]

    assert main(["gc", url, "--keep-last", "1"]) == 0
    assert [m["version"] for m in Store(url).manifests()] == [3]
    names = store.storage.list("")
    assert "reports/v000001.html" not in names and "reports/v000003.html" in names
    assert Store(url).read("decisions").height == store.manifest(3)["counts"]["input"]
    checked = verify_store(url)
    assert checked.ok and checked.files_checked > 10
    store.storage.write("labeling/queue.parquet", b"not the queue")  # damaged in the bucket
    found = [f.path for f in verify_store(url).findings if f.severity == "damaged"]
    assert found == [f"{url}/labeling/queue.parquet"]


def test_leanset_clean_commits_into_a_bucket_store(s3, tmp_path):
    from sklearn.datasets import load_digits

    import leanset
    from tests.test_api import EXACT, frame

    x, y = load_digits(return_X_y=True)
    x, y = x[:200].astype(np.float32), y[:200].copy()
    x[190:], y[190:] = x[:10], y[:10]
    url = f"s3://{s3.bucket()}/api"
    args = {"id": "id", "label": "label", "embeddings": x, "dedup": EXACT, "label_noise": None}
    r = leanset.clean(frame(y), store=url, storage_options=s3.options, **args)
    assert len(r.kept()) == 190
    assert Store(url, s3.options).manifest()["counts"]["kept"] == 190
    again = leanset.clean(frame(y), store=url, storage_options=s3.options, **args)
    assert [m["version"] for m in Store(url, s3.options).manifests()] == [1]  # unchanged
    assert len(again.kept()) == 190


def test_concurrent_queue_rewrites_on_a_bucket_lose_nothing(s3):
    """Four writers add their own rows at once: the bucket's lease serialises the rewrites."""
    from concurrent.futures import ThreadPoolExecutor

    from leanset.pipelines.store.queue import enqueue

    url = f"s3://{s3.bucket()}/q"

    def add(k: int) -> None:
        rows = pl.DataFrame(
            {
                "sample_id": [f"w{k}-{i}" for i in range(5)],
                "source": ["x"] * 5,
                "reason": ["uncertain"] * 5,
            }
        )
        store = Store(url, s3.options)  # one per writer, as separate processes have
        with store.labeling(write=True) as root:
            enqueue(root, rows, run_id=f"writer-{k}", version=1)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, range(4)))
    store = Store(url, s3.options)
    with store.labeling() as root:
        queue = read_queue(root)
    assert sorted(queue["sample_id"]) == sorted(f"w{k}-{i}" for k in range(4) for i in range(5))
    assert store.storage.list("locks") == []  # every lease released


def test_a_saved_dataset_in_a_bucket_decides_as_on_disk(s3, tmp_path, digits):  # noqa: F811
    import datasets

    table = pl.read_parquet(tmp_path / "digits.parquet").head(400)
    datasets.Dataset.from_polars(table).save_to_disk(str(tmp_path / "saved"))
    name = s3.bucket()
    _upload(tmp_path / "saved", f"s3://{name}/saved", s3.options)
    body = DIGITS | {"source": {"type": "disk", "path": "saved"}, "active_learning": None}
    remote = {"type": "disk", "path": f"s3://{name}/saved", **_opts(s3)}
    bucket = body | {"source": remote, "store": f"s3://{name}/s", **_opts(s3)}
    config = write_flows(tmp_path, local=body, bucket=bucket)
    run_core(load_flow(config, "local"))
    run_core(load_flow(config, "bucket"))
    keys = ["sample_id", "kept", "drop_reason", "label", "label_issue"]
    got = Store(f"s3://{name}/s", s3.options).read("decisions").select(keys).sort("sample_id")
    assert got.equals(Store(tmp_path / "store").read("decisions").select(keys).sort("sample_id"))


def _leak_sets(tmp_path: Path) -> list[np.ndarray]:
    """bench/test: b0, b1; mine/train: a near copy of b0 and four others; the near copies."""
    rng = np.random.default_rng(3)
    bases = [rng.integers(0, 256, (16, 16)) for _ in range(8)]
    near = [np.clip(b + rng.normal(0, 3, (16, 16)), 0, 255) for b in bases]
    for name, img in zip(["b0", "b1"], bases[:2], strict=True):
        write_png(tmp_path / f"bench/test/a/{name}.png", img)
    for name, img in zip(["c0", "m2", "m3", "m4", "m5"], [near[0], *bases[2:6]], strict=True):
        write_png(tmp_path / f"mine/train/a/{name}.png", img)
    return near


def test_a_reference_store_in_a_bucket_drops_its_copies_on_any_machine(s3, tmp_path, monkeypatch):
    near = _leak_sets(tmp_path)
    name = s3.bucket()
    bench_url, mine_url = f"s3://{name}/benchstore", f"s3://{name}/mine"
    common = {"dedup": {"threshold": 0.95}, "outliers": {"policy": "off"}}
    bench = pixel_flow_body(source={"type": "imagefolder", "path": "bench"}, store=bench_url)
    ref = {"store": bench_url, "splits": ["test"]}
    given = {"against": [ref | {"storage_options": s3.options}]}
    mine = pixel_flow_body(source={"type": "imagefolder", "path": "mine"}, leaks=given)
    inherit = mine | {"leaks": {"against": [ref]}, "store": mine_url, **_opts(s3)}
    config = write_flows(
        tmp_path, bench=bench | common | _opts(s3), mine=mine | common, inherit=inherit | common
    )
    run_core(load_flow(config, "bench"))
    bench_ids = {
        r["source"]: r["sample_id"]
        for r in Store(bench_url, s3.options).read("decisions").iter_rows(named=True)
    }
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-2"))  # no mirror of it here
    first = run_core(load_flow(config, "mine"))
    assert first.summary.counts.by_reason == {"contaminated": 1}
    rows = {
        r["source"]: r for r in Store(tmp_path / "store").read("decisions").iter_rows(named=True)
    }
    assert rows["train/a/c0.png"]["contaminated_by"] == f"benchstore:{bench_ids['test/a/b0.png']}"
    manifest = Store(tmp_path / "store").latest()
    assert manifest["checks"]["contamination"]["found"] == {"benchstore": 1}
    assert "storage_options" not in manifest["config"]["leaks"]["against"][0]  # no credentials

    run_core(load_flow(config, "inherit"))  # the flow's own storage_options reach the reference
    assert (
        _decisions(Store(mine_url, s3.options))
        .drop("run_id", strict=False)
        .equals(_decisions(Store(tmp_path / "store")).drop("run_id", strict=False))
    )
    assert run_core(load_flow(config, "mine")).summary.unchanged
    write_png(tmp_path / "bench/test/a/b3.png", near[3])  # the reference gains a copy of m3
    run_core(load_flow(config, "bench"))
    again = run_core(load_flow(config, "mine"))
    assert not again.summary.unchanged
    assert again.summary.counts.by_reason == {"contaminated": 2}


def test_a_reference_stores_storage_options_are_checked(s3, tmp_path):
    url = f"s3://{s3.bucket()}/bench"
    bad = {"against": [{"store": url, "storage_options": {"nonsense_key": "1"}}]}
    config = write_flows(tmp_path, f=pixel_flow_body(leaks=bad))
    with pytest.raises(ConfigError, match=r"leaks.against\[0\].storage_options: cannot open it"):
        load_flow(config, "f")
    local = {"against": [{"store": "bench", "storage_options": {"aws_region": "eu"}}]}
    config = write_flows(tmp_path, f=pixel_flow_body(leaks=local))
    with pytest.raises(ConfigError, match=r"leaks.against\[0\].storage_options: applies to s3://"):
        load_flow(config, "f")


def test_a_new_machine_does_not_hash_a_bucket_sources_files_again(s3, tmp_path, monkeypatch):
    from leanset.pipelines.store.storage import PROCESS

    make_imagefolder(tmp_path / "images")
    name = s3.bucket()
    _upload(tmp_path / "images", f"s3://{name}/data/images", s3.options)
    source = {"type": "imagefolder", "path": f"s3://{name}/data/images", **_opts(s3)}
    body = pixel_flow_body(source=source, store=f"s3://{name}/store", **_opts(s3))
    settings = load_flow(write_flows(tmp_path, bucket=body), "bucket")
    run_core(settings)
    remote = Store(f"s3://{name}/store", s3.options)
    hashes = remote.storage.read("cache/file-hashes.parquet")
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-2"))  # a fresh mirror
    puts = PROCESS.requests.get("put", 0)
    assert run_core(settings).summary.unchanged
    assert PROCESS.requests.get("put", 0) == puts  # no file hashed: its cache is not rewritten
    assert remote.storage.read("cache/file-hashes.parquet") == hashes

    write_png(tmp_path / "images/train/a/img000.png", np.full((16, 16), 5))  # a new ETag
    _upload(tmp_path / "images", f"s3://{name}/data/images", s3.options)
    monkeypatch.setenv("LEANSET_CACHE_DIR", str(tmp_path / "machine-3"))
    assert run_core(settings).summary.version == 2  # the changed object was hashed again
    assert remote.storage.read("cache/file-hashes.parquet") != hashes


def test_label_studio_tasks_of_a_bucket_image_source_open_through_the_bucket(
    s3, tmp_path, monkeypatch, capsys
):
    import urllib.request

    from leanset.pipelines.cli import main

    images = make_imagefolder(tmp_path / "images")
    rng = np.random.default_rng(7)
    for k in range(6):  # a pool: active learning queues some of them
        write_png(images / f"unlabeled/a/u{k}.png", rng.integers(0, 256, (16, 16)))
    name = s3.bucket()
    _upload(images, f"s3://{name}/data/images", s3.options)
    source = {"type": "imagefolder", "path": f"s3://{name}/data/images", **_opts(s3)}
    url = f"s3://{name}/store"
    labels = {"label_noise": {"policy": "flag"}, "active_learning": {"budget": 4}}
    body = pixel_flow_body(source=source, store=url, **labels, **_opts(s3))
    run_core(load_flow(write_flows(tmp_path, f=body), "f"))
    for key, value in s3.options.items():  # the CLI reads credentials from the environment
        monkeypatch.setenv(key, value)

    out = tmp_path / "tasks.json"
    assert main(["queue", "export", url, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    tasks = json.loads(out.read_text())
    assert len(tasks) == 4
    for task in tasks:  # what Label Studio's S3 storage resolves (and presigns) for the browser
        assert task["data"]["image"] == f"s3://{name}/data/images/{task['data']['source']}"
    assert f"bucket/container {name}, prefix data/images" in " ".join(said.split())

    signed = tmp_path / "signed.json"
    argv = ["queue", "export", url, "--out", str(signed), "--status", "all", "--presign", "600"]
    assert main(argv) == 0
    for task in json.loads(signed.read_text()):  # links any browser opens, for 10 minutes
        link = task["data"]["image"]
        assert link.startswith(s3.endpoint) and "X-Amz-Signature=" in link
        with urllib.request.urlopen(link) as response:
            assert response.read() == (images / task["data"]["source"]).read_bytes()


def test_label_studio_names_azure_objects_as_its_azure_storage_does():
    from leanset.pipelines.labelstudio import cloud_url

    assert cloud_url("az://photos/data/set") == "azure-blob://photos/data/set"
    assert cloud_url("abfss://photos@acct.dfs.core.windows.net/set/") == "azure-blob://photos/set"
    assert cloud_url("gs://b/p") == "gs://b/p" and cloud_url("s3://b/p/") == "s3://b/p"


def _unanswered(scheme: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store URL of `scheme` whose object store cannot answer here (no network needed)."""
    from tests.ray_cluster import free_port

    for key in list(os.environ):
        if key.startswith(("AWS_", "GOOGLE_", "AZURE_")):
            monkeypatch.delenv(key)
    if scheme == "s3":  # nothing listens there
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
    if scheme == "gs":  # a service account key that is not one
        monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")
    return f"{scheme}://bucket/store"  # az: no account named anywhere


@pytest.mark.parametrize(
    ("scheme", "names"),
    [("s3", "AWS_ACCESS_KEY_ID"), ("gs", "GOOGLE_APPLICATION_CREDENTIALS"), ("az", "AZURE_")],
)
def test_an_object_store_that_does_not_answer_is_one_line_naming_its_credentials(
    scheme, names, capsys, monkeypatch
):
    from leanset.pipelines.cli import main

    url = _unanswered(scheme, monkeypatch)
    assert main(["versions", url]) == 2
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if line.strip()]
    assert len(lines) == 1 and url in lines[0] and names in lines[0], lines
    assert "Traceback" not in said.err


def test_calibrate_stores_its_record_in_a_bucket_store_and_the_next_run_prices_with_it(
    s3, tmp_path, monkeypatch, capsys
):
    """`leanset calibrate` on a flow whose store is a bucket: the record is an object of the
    store (nothing is written to a local folder named like the URL), the kept-sample race reads
    the bucket's latest version, and the next run prices its epoch with the record."""
    from leanset.pipelines.cli import main

    make_imagefolder(tmp_path / "images")
    url = f"s3://{s3.bucket()}/stores/calibrated"
    config = _flows(tmp_path, url, s3.options, dedup={"threshold": 0.95})
    bucket = load_flow(config, "bucket")
    assert run_core(bucket).summary.version == 1
    monkeypatch.chdir(tmp_path)
    fast = ["--steps", "2", "--repeats", "2", "--warmup", "1", "--batch-size", "4"]
    args = ["calibrate", str(config), "--flow", "bucket", *fast, "--kept-epochs", "2"]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"stored in {url}/cost/calibration.json" in printed
    assert "at this rate version 1's training splits" in printed  # the bucket's latest version
    assert not (tmp_path / "s3:").exists()
    remote = Store(url, s3.options)
    record = json.loads(remote.storage.read("cost/calibration.json"))
    assert record["kept"]["version"] == 1
    second = run_core(bucket)
    assert second.summary.version == 2  # a new cost input: a new statement
    assert "leanset calibrate on cpu" in remote.manifest(2)["cost"]["price_source"]


def test_the_access_check_a_ray_node_runs_reaches_a_bucket_or_names_what_failed(s3):
    """What each Ray node runs before work (`bucket_problems`): a store it can list and write
    passes and leaves no probe object behind; a store it cannot reach is one message naming the
    URL and where credentials come from, within seconds (not obstore's minutes of retries)."""
    import time

    from leanset.pipelines.engine.cluster import bucket_problems
    from leanset.pipelines.store.storage import ObjectStorage

    url = f"s3://{s3.bucket()}/store"
    assert (
        bucket_problems({"store": (url, s3.options, True), "source": (url, s3.options, False)})
        == {}
    )
    assert ObjectStorage(url, s3.options).list("") == []  # the probe was deleted

    closed = {**s3.options, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}"}
    t0 = time.perf_counter()
    found = bucket_problems({"store": (url, closed, True)})
    assert time.perf_counter() - t0 < 60
    assert set(found) == {"store"} and url in found["store"]
    assert "AWS_ACCESS_KEY_ID" in found["store"], found


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: a connection is refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
