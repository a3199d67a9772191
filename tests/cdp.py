"""A small driver for headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
the browser reads commands on fd 3 and writes answers on fd 4, NUL-terminated JSON). Enough for the
explorer's browser tests to click, read the DOM after scripts ran, and follow links, with nothing
beyond the standard library and Debian's ``chromium``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert exe, "the browser tests need Chromium: apt-get install chromium (.ci/run installs it)"
    return exe


class Browser:
    """One headless Chromium with one page. ``open(url)``, ``js(expression)``, ``wait(expression)``."""

    def __init__(self, width: int = 1200, height: int = 900):
        ours_r, browser_w = os.pipe()  # the browser writes on its fd 4
        browser_r, ours_w = os.pipe()  # the browser reads on its fd 3
        self.profile = tempfile.mkdtemp(prefix="saevlm-chromium-")

        def fds():  # in the child, before exec: the protocol's two descriptors at 3 and 4
            r, w = os.dup(browser_r), os.dup(browser_w)  # above 4 first: the originals may sit at 3 or 4
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=fds)
        os.close(browser_r)
        os.close(browser_w)
        self._r, self._w = os.fdopen(ours_r, "rb", buffering=0), os.fdopen(ours_w, "wb", buffering=0)
        self._buf = b""
        self._id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = self._r.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self._w.write(json.dumps(msg).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 30.0):
        """Wait until ``expression`` is truthy; returns its value."""
        end = time.monotonic() + timeout
        while True:
            try:
                v = self.js(expression)
            except RuntimeError:
                v = None  # the page is between documents
            if v:
                return v
            if time.monotonic() > end:
                raise TimeoutError(f"waited {timeout:.0f} s for {expression!r}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the document and its scripts are done."""
        self.call("Page.navigate", session=True, url=url)
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def follow(self, selector: str) -> str:
        """Click the link ``selector`` and wait for the next page; returns its URL."""
        before = self.js("location.href")
        target = self.js(f"document.querySelector({json.dumps(selector)}).href")
        self.js(f"document.querySelector({json.dumps(selector)}).click()")
        if target.split("#")[0] == before.split("#")[0]:
            self.wait(f"location.href === {json.dumps(target)}")
        else:
            self.wait(f"location.href === {json.dumps(target)} && document.readyState === 'complete'")
        return target

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._r.close()
        self._w.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def dump_dom(url: str) -> str:
    """The page as Chromium renders it, after its scripts ran."""
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout
