"""The wheel claims one name: it holds `leanset/` and its dist-info only, installs into a fresh
venv (reaching the dependencies through a .pth file, no editable finder), and runs from there."""

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~40 s alone, ~100 s on a busy machine: building and installing

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    # never this checkout on the path: pip would find leanset "already installed" there
    env = env or {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_holds_only_leanset_and_runs_from_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], tmp_path)
    (wheel,) = dist.glob("leanset-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"leanset", next(t for t in tops if t.endswith(".dist-info"))}, sorted(tops)
    for room in ("pipelines/core.py", "dedup/near.py", "labeling/noise.py", "py.typed"):
        assert f"leanset/{room}" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp_path)
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    (site / "shared-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    script = textwrap.dedent(
        """
        import numpy as np, polars as pl, leanset
        assert "/venv/" in leanset.__file__, leanset.__file__
        x = np.eye(40, dtype=np.float32)[:, :20].copy(); x[20:] = x[:20]  # 20 copies
        r = leanset.clean(pl.DataFrame({"id": [f"r{i}" for i in range(40)]}), id="id",
                          embeddings=x, dedup={"threshold": 0.999}, cost={"quality": False})
        print(leanset.__file__, r.kept().height, r.decisions["drop_reason"].drop_nulls().len())
        """
    )
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = _run([str(python), "-c", script], tmp_path, env).split()
    assert out[0].startswith(str(site)) and out[1:] == ["20", "20"], out
    version = _run([str(venv / "bin" / "leanset"), "--version"], tmp_path, env)
    assert "leanset" in version
