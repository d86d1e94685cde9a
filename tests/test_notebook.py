"""examples/quickstart.ipynb runs top to bottom in a real kernel, and shows what it promises."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = env_path  # the kernel imports this checkout's leanset
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    demo_view = next(h for h in html if "Largest duplicate groups" in h)
    assert "data:image/png;base64," in demo_view and "<svg" in demo_view
    text = "".join(o.get("text", "") for o in outputs)
    flagged = next(line for line in text.splitlines() if "flipped labels among them" in line)
    found = int(flagged.split(", ")[1].split(" of ")[0])
    assert found >= 60, flagged  # most of the 89 flipped labels are found
    assert "DataFrame" in text and sys.executable
