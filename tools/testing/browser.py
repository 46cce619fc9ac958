"""A real headless Chromium for tests, driven over the DevTools protocol: open a page, wait until a person
would see some text, keep a screenshot.

    with HeadlessChromium(tmp_path / "profile") as browser:
        text = browser.open_until(url, ["train/loss"], timeout_s=60)
        browser.screenshot(out_dir / "page.png")

Dumping the DOM once (`--dump-dom`) races single-page apps (MLflow, TensorBoard) that render after their API
calls return; polling the rendered `innerText` through the DevTools protocol waits exactly as long as the
page needs. Needs Debian's `chromium` package; its absence is a loud failure naming the install command.
The browser runs with a fresh profile, no sandbox (tests run as root), no GPU and no background traffic.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["MISSING_CHROMIUM", "BrowserError", "HeadlessChromium", "find_chromium"]

MISSING_CHROMIUM = ("chromium is not installed; the browser tests drive Debian's headless Chromium: "
                    "apt-get install chromium")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-dev-shm-usage", "--window-size=1400,1000", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")


class BrowserError(Exception):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}",) if os.access(p, os.X_OK)), None)
        if found:
            return found
    return None


class HeadlessChromium:
    def __init__(self, profile_dir: Path, *, start_timeout_s: float = 60.0) -> None:
        self.profile_dir = profile_dir
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._ws = None
        self._ids = itertools.count(1)
        self.stderr_tail: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> HeadlessChromium:
        binary = find_chromium()
        if binary is None:
            raise BrowserError(MISSING_CHROMIUM)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        # Crash dumps and caches go under $HOME: keep it inside the test. $TMPDIR stays the short one the test
        # rule sets: Chromium's single-instance socket lives there, and a UNIX socket path must fit 108 bytes.
        env = dict(os.environ, HOME=str(self.profile_dir))
        self._proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile_dir / 'data'}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                      start_new_session=True)
        endpoint = self._devtools_endpoint()
        port = re.match(r"ws://[^:]+:(\d+)/", endpoint).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("chromium started without a page target")
        import websocket

        self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def _devtools_endpoint(self) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self._proc.stderr:
                self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-40:]
                match = re.search(r"DevTools listening on (ws://\S+)", line)
                if match and not found:
                    found.append(match.group(1))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while not found:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError("chromium did not open its DevTools endpoint (exit code "
                                   f"{self._proc.poll()}); its last messages:\n" + "\n".join(self.stderr_tail))
            time.sleep(0.1)
        return found[0]

    def __exit__(self, *exc) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None and self._proc.poll() is None:
            import signal

            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()

    # -- protocol ----------------------------------------------------------------------------------------
    def call(self, method: str, **params):
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    # -- what a person sees ------------------------------------------------------------------------------
    def open_until(self, url: str, texts: list[str], *, timeout_s: float = 90.0,
                   normalize: Callable[[str], str] = lambda text: text) -> str:
        """Navigates to `url` and waits until the rendered page shows every one of `texts`; returns its text.

        `normalize` maps the page's text first (e.g. to join a label a page splits over two elements).
        """
        navigation = self.call("Page.navigate", url=url)
        if navigation.get("errorText"):
            raise BrowserError(f"{url}: {navigation['errorText']}")
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = normalize(self.evaluate("document.body ? document.body.innerText : ''") or "")
            if all(t in text for t in texts):
                return text
            time.sleep(0.5)
        missing = [t for t in texts if t not in text]
        raise BrowserError(f"{url} did not show {missing} within {timeout_s:.0f} s; the page read:\n{text[:3000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
