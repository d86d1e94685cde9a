"""A real Azure Blob API server for tests: Azurite (npm's `azurite`), on 127.0.0.1.

`.ci/run` installs it under `.azurite/`; elsewhere set `LEANSET_AZURITE_BLOB` to an
`azurite-blob` executable (`npm install --prefix DIR azurite@3.37.0`). Each server has its own
data folder and a free port; a container is created with the emulator's well-known account key
(a Shared Key request signed here: no Azure client library needed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

EXECUTABLE_ENV = "LEANSET_AZURITE_BLOB"
ACCOUNT = "devstoreaccount1"  # Azurite's documented development account and key
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def find_executable(repo: Path) -> Path | None:
    """`azurite-blob` from `$LEANSET_AZURITE_BLOB`, else `repo/.azurite`, else None."""
    given = os.environ.get(EXECUTABLE_ENV)
    if given:
        return Path(given) if Path(given).is_file() else None
    local = repo / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
    return local if local.is_file() else None


@dataclass
class Azurite:
    """A running Azurite blob service and the storage options that reach it."""

    proc: subprocess.Popen
    endpoint: str
    folder: str

    @property
    def options(self) -> dict[str, str]:
        return {
            "azure_storage_account_name": ACCOUNT,
            "azure_storage_account_key": KEY,
            "azure_storage_endpoint": f"{self.endpoint}/{ACCOUNT}",
            "allow_http": "true",
        }

    def container(self) -> str:
        """A new empty container; its name."""
        name = f"leanset-{uuid.uuid4().hex[:12]}"
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        resource = f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        signed = "PUT\n" + "\n" * 11 + canonical + resource
        mac = hmac.new(base64.b64decode(KEY), signed.encode(), hashlib.sha256).digest()
        auth = f"SharedKey {ACCOUNT}:{base64.b64encode(mac).decode()}"
        request = urllib.request.Request(
            f"{self.endpoint}/{ACCOUNT}/{name}?restype=container",
            method="PUT",
            headers={**headers, "Authorization": auth, "Content-Length": "0"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(executable: Path, timeout: float = 60.0) -> Azurite:
    """Start Azurite's blob service on a free port of 127.0.0.1; return once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    folder = tempfile.mkdtemp(prefix="leanset-azurite-")
    cmd = [str(executable), "--silent", "--location", folder, "--blobHost", "127.0.0.1"]
    cmd += ["--blobPort", str(port), "--skipApiVersionCheck"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return Azurite(proc, f"http://127.0.0.1:{port}", folder)
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"azurite-blob did not start on port {port} within {timeout:g} s")
