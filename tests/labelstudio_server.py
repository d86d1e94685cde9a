"""A real Label Studio server for the live tests, started from its own virtual environment.

Label Studio pins Django, numpy and many more packages that must stay out of leanset's
environment, so it lives in a venv of its own (`.ci/run` makes `.ls-venv/`; elsewhere set
`LEANSET_LABEL_STUDIO` to a `label-studio` executable). The server binds 127.0.0.1 on a free
port; its database, media, secret key and HOME are in one temporary folder; its admin user and
legacy API token are created at start from environment variables; files under `document_root`
are served at `/data/local-files/?d=<path below it>` once a Local Storage covers them.

A first start on a fresh folder runs Django's migrations: 70-140 s on two busy cores, and up to
8 minutes on two cores shared with a dozen other jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

EXECUTABLE_ENV = "LEANSET_LABEL_STUDIO"
# Only these are passed on: Label Studio also reads unprefixed USERNAME, PASSWORD, HOST, PORT and
# DEBUG as settings, which a shell or CI may have set for other reasons.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ")


class LabelStudioDown(RuntimeError):
    """The server did not start or did not answer as expected; the message holds its log's end."""


@dataclass(frozen=True)
class Server:
    """One server: executable, folders, port, admin account."""

    executable: Path
    folder: Path
    port: int
    username: str = "admin@leanset.test"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    token: str = field(default_factory=lambda: secrets.token_hex(20))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def document_root(self) -> Path:
        """Files below it can be served (through a Local Storage on a folder inside it)."""
        return self.folder / "files"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"


def find_executable(repo: Path) -> Path | None:
    """`label-studio` from `$LEANSET_LABEL_STUDIO`, else `repo/.ls-venv`, else None."""
    given = os.environ.get(EXECUTABLE_ENV)
    if given:
        if not Path(given).is_file():
            raise LabelStudioDown(f"{EXECUTABLE_ENV}={given!r} is not a file")
        return Path(given)
    local = repo / ".ls-venv" / "bin" / "label-studio"
    return local if local.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(server: Server) -> dict[str, str]:
    """What the server runs with: a few passed-through variables and its own settings."""
    env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env.update(
        {
            "HOME": str(server.folder / "home"),
            "LABEL_STUDIO_BASE_DATA_DIR": str(server.folder / "data"),
            "LABEL_STUDIO_USERNAME": server.username,
            "LABEL_STUDIO_PASSWORD": server.password,
            "LABEL_STUDIO_USER_TOKEN": server.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # else that token is refused
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(server.document_root),
            "LABEL_STUDIO_HOST": "",
            # nothing leaves the machine: no error reports, analytics or version checks
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        }
    )
    return env


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def _tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(server: Server, process: subprocess.Popen, timeout: float) -> None:
    """Until /health/ is UP and whoami with the token is our admin (not another server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioDown(
                f"Label Studio exited with {process.returncode}:\n{_tail(server.log)}"
            )
        status, body = _get(server.url + "/health/")
        if status == 200 and json.loads(body).get("status") == "UP":
            status, body = _get(server.url + "/api/current-user/whoami", server.token)
            email = json.loads(body).get("email") if status == 200 else None
            if email != server.username:
                raise LabelStudioDown(f"{server.url} is another server (whoami: {status})")
            return
        time.sleep(0.5)
    raise LabelStudioDown(f"Label Studio not healthy after {timeout:.0f} s:\n{_tail(server.log)}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)


@contextlib.contextmanager
def running(executable: Path, folder: Path, timeout: float = 900.0) -> Iterator[Server]:
    """A started server, stopped on exit whatever happens inside."""
    server = Server(executable, folder, free_port())
    for sub in ("home", "data", "files"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    command = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    command += ["--port", str(server.port), "--debug"]  # --debug: fail on a taken port
    with open(server.log, "ab") as log:
        process = subprocess.Popen(
            command,
            env=environment(server),
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(server, process, timeout)
        yield server
    finally:
        _stop(process)


def second_user_token(url: str, email: str, password: str) -> str:
    """A second annotator: signed up through the form; their API token from their session."""
    import requests

    session = requests.Session()
    for page in ("/user/signup/", "/user/login/"):
        session.get(url + page, timeout=30).raise_for_status()
        form = {"csrfmiddlewaretoken": session.cookies["csrftoken"], "email": email}
        answer = session.post(
            url + page,
            data={**form, "password": password},
            headers={"Referer": url + page},
            allow_redirects=False,
            timeout=30,
        )
        if answer.status_code == 302:
            token = session.get(url + "/api/current-user/token", timeout=30)
            token.raise_for_status()
            return str(token.json()["token"])
    raise LabelStudioDown(f"could neither sign up nor sign in {email} at {url}")
