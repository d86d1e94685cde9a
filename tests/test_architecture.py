"""The layout ARCHITECTURE.md draws holds: imports run one way, no cycles, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dedup", "labeling", "pipelines")
# What each package may import from the others: the stage packages never reach into orchestration;
# the public API (`leanset/*.py`, package "leanset") sits above all three.
ALLOWED = {
    "dedup": set(),
    "labeling": {"dedup"},
    "pipelines": {"dedup", "labeling"},
    "leanset": {"dedup", "labeling", "pipelines"},
}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """Every module by its one import path, `leanset.<package>.<module>` (the API: `leanset.<m>`)."""
    out = {}
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    paths += sorted((ROOT / "leanset").glob("*.py"))  # the API's own files (the packages are links)
    for path in paths:
        parts = path.relative_to(ROOT).with_suffix("").parts
        parts = parts if parts[0] == "leanset" else ("leanset", *parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _package(module: str) -> str:
    """`dedup`, `labeling`, `pipelines`, or `leanset` for the API's own modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "leanset"


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Project modules a file imports (anywhere in it, lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module: str) -> None:
    own = _package(module)
    foreign = {m for m in GRAPH[module] if _package(m) != own}
    bad = sorted(m for m in foreign if _package(m) not in ALLOWED[own])
    assert not bad, f"{module} imports {bad}; {own}/ may use only {sorted(ALLOWED[own]) or 'none'}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_functions_stay_short() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_architecture_md_lists_every_module() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    files = {str(p.relative_to(ROOT)) for p in MODULES.values()}
    missing = sorted(f for f in files if f"`{f}`" not in text and not f.endswith("__init__.py"))
    assert not missing, f"ARCHITECTURE.md's module table lacks {missing}"


def test_one_import_path() -> None:
    """Code imports `leanset.<package>`, never a bare `pipelines`/`dedup`/`labeling` name."""
    bare = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.parts[len(ROOT.parts)] in {".venv", ".ls-venv", "build", "leanset"}:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            bare += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare, f"imports outside the leanset package: {bare}"
