"""A PEP 503 simple package index on 127.0.0.1, standing for PyPI in the environment tests.

It serves wheels the test builds (real zip files with real metadata, installed by the real pip)
and counts every file download, so a test can tell whether setup really ran or came from the
cache. Sandboxes reach it by a name (`pypi.test`) that BACKSPACE_EGRESS_RESOLVE maps here: the
only way a loopback address is reachable through the egress door.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass
class Wheel:
    name: str
    version: str
    files: dict[str, str]  # path in the wheel -> text
    console_scripts: dict[str, str] = field(default_factory=dict)  # name -> "module:function"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-py3-none-any.whl"

    def build(self) -> bytes:
        """The wheel's bytes: the files, METADATA, WHEEL, entry points and a RECORD of hashes."""
        info = f"{self.name}-{self.version}.dist-info"
        members = dict(self.files)
        members[f"{info}/METADATA"] = (
            f"Metadata-Version: 2.1\nName: {self.name}\nVersion: {self.version}\n"
        )
        members[f"{info}/WHEEL"] = (
            "Wheel-Version: 1.0\nGenerator: backspace-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        )
        if self.console_scripts:
            lines = "".join(f"{k} = {v}\n" for k, v in self.console_scripts.items())
            members[f"{info}/entry_points.txt"] = f"[console_scripts]\n{lines}"
        record = []
        for path, text in members.items():
            digest = hashlib.sha256(text.encode()).digest()
            encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            record.append(f"{path},sha256={encoded},{len(text.encode())}")
        record.append(f"{info}/RECORD,,")
        members[f"{info}/RECORD"] = "\n".join(record) + "\n"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, text in members.items():
                archive.writestr(path, text)
        return buffer.getvalue()


class PackageIndex:
    """`with PackageIndex([wheel, ...]) as index:` serves /simple/ and /files/ on a free port."""

    def __init__(self, wheels: list[Wheel]) -> None:
        self.files = {wheel.filename: wheel.build() for wheel in wheels}
        self.projects: dict[str, list[str]] = {}
        for wheel in wheels:
            self.projects.setdefault(wheel.name.lower(), []).append(wheel.filename)
        self.downloads: Counter[str] = Counter()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with index._lock:
                    index.requests.append(self.path)
                status, body, kind = index.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0].split("#", 1)[0]
        if path in ("/simple", "/simple/"):
            links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(self.projects))
            return 200, _page(links), "text/html"
        if path.startswith("/simple/"):
            project = path.removeprefix("/simple/").strip("/").lower().replace("_", "-")
            names = self.projects.get(project)
            if names is None:
                return 404, b"not found", "text/plain"
            links = "".join(
                f'<a href="/files/{n}#sha256={hashlib.sha256(self.files[n]).hexdigest()}">'
                f"{html.escape(n)}</a>\n"
                for n in names
            )
            return 200, _page(links), "text/html"
        if path.startswith("/files/"):
            name = path.removeprefix("/files/")
            if name in self.files:
                with self._lock:
                    self.downloads[name] += 1
                return 200, self.files[name], "application/octet-stream"
        return 404, b"not found", "text/plain"

    @property
    def total_downloads(self) -> int:
        with self._lock:
            return sum(self.downloads.values())

    def __enter__(self) -> PackageIndex:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()


def _page(links: str) -> bytes:
    return f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()
