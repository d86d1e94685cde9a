"""The embedding matrix every stage reads, checked in one place, and the device it runs on.

Stages receive a float32 N x D matrix aligned with the sample table (row i is table row i). The
public function of each stage validates it with `check_matrix`; private helpers trust it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

NORM_TOL = 1e-3
_CHECK_ROWS = 65536  # rows per validation block (bounds temporary memory)


def check_matrix(
    x: object,
    *,
    name: str = "embeddings",
    rows: int | None = None,
    unit: bool = False,
    nonempty: bool = False,
    describe: Callable[[int], str] | None = None,
    error: type[Exception] = ValueError,
) -> np.ndarray:
    """`x` as a C-contiguous float32 N x D matrix (D >= 1) of finite values, else `error`.

    `rows`: the row count it must have (the sample table's); `unit`: rows must have L2 norm 1;
    `nonempty`: at least one row; `describe(row)` names a bad row's sample in the message.
    Passing a non-array or a non-float array is a programming error (TypeError).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise error(f"{name} must be 2-D (an N x D matrix), got shape {x.shape}")
    if x.shape[1] < 1:
        raise error(f"{name} must have at least one column, got shape {x.shape}")
    if nonempty and x.shape[0] == 0:
        raise error(f"{name} must have at least one row, got shape {x.shape}")
    if rows is not None and x.shape[0] != rows:
        raise error(f"{name} has {x.shape[0]} rows, the sample table {rows}")
    out = np.ascontiguousarray(x, dtype=np.float32)
    for start in range(0, out.shape[0], _CHECK_ROWS):
        _check_block(out[start : start + _CHECK_ROWS], start, name, unit, describe, error)
    return out


class LazyRows(Protocol):
    """A matrix kept elsewhere (a cluster's object store): asked for bounded pieces only."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def take(self, rows: np.ndarray) -> LazyRows: ...

    def fetch(self, rows: np.ndarray) -> np.ndarray: ...

    def dense(self) -> np.ndarray: ...

    def apply(self, rows: np.ndarray, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def first_bad_row(self, unit: bool) -> int | None: ...

    def neighbours(
        self, k: int, n_sample: int, *, seed: int = 0, rows: np.ndarray | None = None
    ) -> Any: ...


Rows = np.ndarray | LazyRows  # what the dedup stage searches


def check_rows(
    x: LazyRows,
    *,
    name: str = "embeddings",
    rows: int | None = None,
    unit: bool = False,
    describe: Callable[[int], str] | None = None,
    error: type[Exception] = ValueError,
) -> LazyRows:
    """`check_matrix` for a matrix kept elsewhere: the same messages, from its first bad window."""
    n, dim = x.shape
    if dim < 1:
        raise error(f"{name} must have at least one column, got shape {x.shape}")
    if rows is not None and n != rows:
        raise error(f"{name} has {n} rows, the sample table {rows}")
    bad = x.first_bad_row(unit)
    if bad is not None:
        start = bad // _CHECK_ROWS * _CHECK_ROWS
        window = x.fetch(np.arange(start, min(start + _CHECK_ROWS, n)))
        _check_block(window, start, name, unit, describe, error)
    return x


def _check_block(
    block: np.ndarray,
    start: int,
    name: str,
    unit: bool,
    describe: Callable[[int], str] | None,
    error: type[Exception],
) -> None:
    """Finite values (and unit norms) in one block of rows; the first bad row is named."""

    def where(r: int) -> str:
        row = start + r
        return f"row {row}" + (f" ({describe(row)})" if describe else "")

    bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
    if bad.size:
        raise error(f"{name} {where(int(bad[0]))} has a non-finite value (NaN or inf)")
    if not unit:
        return
    norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
    off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOL)
    if off.size:
        r = int(off[0])
        raise error(
            f"{name} {where(r)} has L2 norm {norms[r]:.6g}, expected 1 (within {NORM_TOL}); "
            f"L2-normalise the rows first ({off.size} such rows in rows "
            f"{start}..{start + len(block) - 1})"
        )


# device nodes of the drivers torch's CUDA (NVIDIA, WSL) and ROCm builds run on
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def cuda_available() -> bool:
    """True when torch is importable and sees a CUDA device. Without a GPU's device node torch
    is not imported to be asked (importing it costs a process ~470 MiB: a Ray driver that only
    asks would hold that for nothing)."""
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in GPU_DEVICE_NODES):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto", *, error: type[Exception] = ValueError) -> str:
    """`auto` → `cuda` when torch sees a GPU, else `cpu`; `cuda[:N]` without a GPU is `error`."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not cuda_available():
            raise error(f"device {device!r} was asked for but torch sees no CUDA GPU")
        return device
    raise error(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
