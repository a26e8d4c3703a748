"""A very small W3C WebDriver client (plain JSON over HTTP) for Debian's chromium and chromedriver.

No selenium and no downloaded browser: `/usr/bin/chromedriver` is started on a port of its choosing and
driven with httpx; it starts `/usr/bin/chromium` headless with a fresh profile.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.tls import TLS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
T = TypeVar("T")


def available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


class WebDriverError(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


class Browser:
    def __init__(self, width: int = 1200, height: int = 900) -> None:
        self.profile = tempfile.mkdtemp(prefix="backspace-chromium-")
        # Port 0: chromedriver binds a free port itself and says which. A port found free here
        # could be taken by another worker's chromedriver first, and this client drive that one.
        said = Path(self.profile) / "chromedriver.out"
        with said.open("wb") as out:
            self.driver = subprocess.Popen(
                [CHROMEDRIVER, "--port=0"],
                stdout=out,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.http = httpx.Client(verify=TLS, timeout=60)
        deadline = time.monotonic() + 20
        while True:
            port = re.search(rb"started successfully on port (\d+)", said.read_bytes())
            if port:
                self.http.base_url = httpx.URL(f"http://127.0.0.1:{int(port[1])}")
                try:
                    if self.http.get("/status").json()["value"]["ready"]:
                        break
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline or self.driver.poll() is not None:
                self.close()
                raise RuntimeError(f"chromedriver did not start: {said.read_text()[-2000:]}")
            time.sleep(0.05)
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    *FLAGS,
                    f"--user-data-dir={self.profile}",
                    f"--window-size={width},{height}",
                ],
            },
            "unhandledPromptBehavior": "ignore",
        }
        value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{value['sessionId']}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body if method == "POST" else None)
        value = response.json()["value"]
        if response.status_code >= 400:
            raise WebDriverError(value.get("error", "?"), value.get("message", ""))
        return value

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(method, self.session + path, body if body is not None else {})

    def close(self) -> None:
        try:
            if hasattr(self, "session"):
                self.http.delete(self.session)
        finally:
            self.http.close()
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- navigation and the page --------------------------------------------------
    def get(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def refresh(self) -> None:
        self.call("POST", "/refresh")

    @property
    def url(self) -> str:
        value: str = self.call("GET", "/url")
        return value

    def js(self, script: str, *args: Any) -> Any:
        """Run `script` as a function body; `arguments[i]` are `args`."""
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        value = self.call("POST", "/element", {"using": "css selector", "value": css})
        element: str = value[ELEMENT]
        return element

    def type(self, css: str, text: str) -> None:
        self.call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.call("POST", f"/element/{self.find(css)}/click")

    def text(self, css: str) -> str:
        value: str = self.js("return document.querySelector(arguments[0]).textContent", css)
        return value

    def alert_text(self) -> str | None:
        """The text of an open alert/confirm/prompt, or None when there is none."""
        try:
            value: str = self.call("GET", "/alert/text")
            return value
        except WebDriverError as exc:
            if exc.error == "no such alert":
                return None
            raise

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))

    def set_size(self, width: int, height: int) -> None:
        self.call("POST", "/window/rect", {"width": width, "height": height})

    def wait(self, check: Callable[[], T], timeout: float = 20, what: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or check}")
            time.sleep(0.05)
