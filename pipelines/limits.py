"""Process limits checked before a run starts: an address-space limit (`ulimit -v`) too small for
the libraries a run maps ends in an allocator abort or `libgomp: Thread creation failed` deep
inside them, with no word from leanset; it is refused first, in one message."""

from __future__ import annotations

import os

GIB = 1 << 30
NEED_ENV = "LEANSET_MIN_ADDRESS_SPACE_GIB"
NEED_GIB = 8.0  # measured: a small run maps ~6.5 GiB (torch's libraries, thread stacks, Prefect)


class LimitError(ValueError):
    """This process's limits are too small for what was asked (the message names the limit)."""


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS of this process in bytes, or None when unlimited (or not POSIX)."""
    try:
        import resource
    except ImportError:  # pragma: no cover
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def needed_gib() -> float:
    """The address space a run needs, in GiB (`LEANSET_MIN_ADDRESS_SPACE_GIB` overrides it)."""
    raw = os.environ.get(NEED_ENV)
    try:
        return float(raw) if raw else NEED_GIB
    except ValueError:
        raise LimitError(f"{NEED_ENV}={raw!r} is not a number of GiB") from None


def check_address_space(command: str) -> None:
    """Refuse `command` when `ulimit -v` leaves less address space than a run maps."""
    limit, need = address_space_limit(), needed_gib()
    if limit is None or limit >= need * GIB:
        return
    raise LimitError(
        f"`leanset {command}` needs about {need:g} GiB of address space, and this process is "
        f"limited to {limit / GIB:.2f} GiB (`ulimit -v`); the memory it uses is far less, but "
        f"torch, polars and Prefect map large libraries and thread stacks. Raise the limit "
        f"(`ulimit -v unlimited`, or at least {need:g} GiB) and rerun; where fewer libraries are "
        f"mapped (a CPU-only torch), set {NEED_ENV} lower"
    )
