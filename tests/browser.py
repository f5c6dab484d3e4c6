"""Headless Chromium driven over the DevTools protocol on a pipe (no driver, no extra package).

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from its fd 3 and
writes replies and events to its fd 4, each message a JSON object followed by a NUL byte.
`open_page` opens a file, waits until the document has loaded (by its own readyState, polled a
bounded number of times, never a sleep), and gives a `Page` to evaluate JavaScript in and to
screenshot.

Chromium comes from the Debian packages (``chromium``). `ensure_chromium` installs it with
apt-get only where the host may be changed (``LGKD_TEST_SLURM=1``, as in CI); elsewhere a
missing browser skips the test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--no-first-run",
    # The machine's network is closed: without these Chromium keeps dialling out.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--remote-debugging-pipe",
]


def ensure_chromium() -> str:
    """Path of the chromium binary; installs the Debian package where allowed, else skips."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("LGKD_TEST_SLURM") != "1":
        pytest.skip("chromium is not installed (apt-get install chromium, or LGKD_TEST_SLURM=1)")
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"apt-get install chromium failed: {proc.stderr[-1000:]}"
    found = shutil.which("chromium")
    assert found, "chromium installed but not on PATH"
    return found


class Page:
    """One page of a Chromium started by `open_page`."""

    def __init__(self, to_browser, from_browser) -> None:
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command and return its result (events before the reply are dropped)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        self._out.flush()
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._in.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(data["data"]))
        return path


@contextlib.contextmanager
def open_page(url: str, width: int = 1280, height: int = 1600, polls: int = 2000) -> Iterator[Page]:
    """Chromium with ``url`` loaded (``document.readyState == "complete"``)."""
    binary = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="lgkd-chromium-") as profile:
        to_r, to_w = os.pipe()  # our commands -> chromium's fd 3
        from_r, from_w = os.pipe()  # chromium's fd 4 -> our replies

        def child_fds() -> None:
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_r, from_w, 3, 4),  # kept whether fds close before or after preexec
            preexec_fn=child_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        with os.fdopen(to_w, "wb") as to_browser, os.fdopen(from_r, "rb") as from_browser:
            page = Page(to_browser, from_browser)
            try:
                target = page.send("Target.createTarget", {"url": "about:blank"}, session=False)
                attached = page.send(
                    "Target.attachToTarget",
                    {"targetId": target["targetId"], "flatten": True},
                    session=False,
                )
                page.session = attached["sessionId"]
                page.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                )
                page.send("Page.navigate", {"url": url})
                for _ in range(polls):
                    if page.evaluate("document.readyState") == "complete":
                        break
                else:
                    raise AssertionError(f"{url} did not finish loading")
                yield page
            finally:
                with contextlib.suppress(Exception):
                    page.send("Browser.close", session=False)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
