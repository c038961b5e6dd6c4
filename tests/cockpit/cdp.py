"""A headless Chromium driven over the DevTools protocol through ``--remote-debugging-pipe``
(fd 3 in, fd 4 out, NUL-separated JSON): no websocket library, no driver binary."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, profile: Path, width: int = 1280, height: int = 900,
                 prefix: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> None:
        """``prefix``: argv that runs chromium elsewhere (nsenter into a container's network);
        ``extra``: more chromium options."""
        exe = chromium()
        assert exe, "chromium is not installed"
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()
        # The child expects its commands on fd 3 and writes answers on fd 4; pass_fds keeps
        # what fds() put there (the test starts no threads, so preexec_fn is safe).
        def fds() -> None:
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)
        self._log = open(profile.parent / "chromium.log", "w")  # noqa: SIM115 (see close())
        self.proc = subprocess.Popen(
            [*prefix, exe, *extra, "--headless", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "--lang=en-US", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4),  # noqa: PLW1509
            stdout=subprocess.DEVNULL, stderr=self._log)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.session: str | None = None
        self.width, self.height = width, height

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)
        self._log.close()

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: bool = False, timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"{method}: no answer from chromium in {timeout} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed its pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))

    def open(self, url: str, cookies: dict[str, str] | None = None) -> None:
        """A fresh page at ``url`` with just ``cookies`` set for its host."""
        host = url.split("/")[2].split(":", 1)[0]
        self.call("Storage.clearCookies")
        for name, value in (cookies or {}).items():
            self.call("Storage.setCookies", {"cookies": [
                {"name": name, "value": value, "domain": host, "path": "/"}]})
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": self.height, "deviceScaleFactor": 1,
            "mobile": False}, session=True)
        self.call("Page.navigate", {"url": url}, session=True)

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 10.0) -> None:
        """Until ``expression`` is truthy (in JavaScript's sense), polled every 100 ms."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.js(f"!!({expression})")
            except RuntimeError as e:
                last = e
            else:
                if last is True:
                    return
            time.sleep(0.1)
        raise AssertionError(f"within {timeout} s, never true: {expression} (last: {last!r})")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport":
                                                    True}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
