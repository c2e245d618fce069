"""Render a page in headless Chromium and record what it did: the browser test's eyes, and the README's screenshot.

Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages on file descriptors 3 and 4, no
port, no websocket library), so nothing but the standard library is needed.
The browser resolves no host name and routes everything through a proxy that
refuses (``--host-resolver-rules``, ``--proxy-server``), so a page can never
reach the network; and every request it attempts is recorded from the
``Network`` domain's events, including those the page's own
Content-Security-Policy blocks, so a page that merely *asks* for something
outside itself is caught.

Standard library only. ``python -m engine.reporting.browser PAGE.html --png OUT.png``
renders a page and prints what it asked for.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BrowserMissing", "PageRender", "chromium_path", "render_page"]

#: The browser binaries looked for, in order (Debian's package installs ``chromium``).
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Boxes and text of the page's figures and of the page itself, measured in the page.
_MEASURE = """JSON.stringify({
  figures: [...document.querySelectorAll('figure.plot')].map(f => {
    const g = f.querySelector('svg, img'); const r = g ? g.getBoundingClientRect() : null;
    return {name: f.dataset.figure, tag: g ? g.tagName.toLowerCase() : null,
            x: r ? r.left + scrollX : 0, y: r ? r.top + scrollY : 0,
            width: r ? r.width : 0, height: r ? r.height : 0,
            shapes: g ? g.querySelectorAll('path, rect, line, polyline, use').length : 0};
  }),
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  text: document.body ? document.body.innerText.length : 0,
  title: document.title
})"""


class BrowserMissing(RuntimeError):
    """No Chromium to render with."""


@dataclass
class PageRender:
    """What the browser made of a page."""

    #: Every URL the page asked for (the page itself included), in order.
    requests: list[str]
    #: ``{name, tag, x, y, width, height, shapes}`` of each ``figure.plot`` (page coordinates, CSS pixels).
    figures: list[dict]
    width: int
    height: int
    text_length: int
    title: str
    #: The whole page as a PNG (``width`` x ``height``).
    screenshot: bytes
    console: list[str] = field(default_factory=list)

    def external_requests(self) -> list[str]:
        """Requests for anything that is not the page file itself or data inside it."""
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:"))]


def chromium_path() -> str | None:
    """The Chromium to use: ``$FSAT_CHROMIUM``, else the first of :data:`CANDIDATES` on the PATH."""
    wanted = os.environ.get("FSAT_CHROMIUM")
    if wanted:
        return wanted if shutil.which(wanted) or Path(wanted).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe: NUL-terminated JSON messages."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, timeout: float) -> None:
        self.proc = proc
        self.write_fd = to_browser
        self.read_fd = from_browser
        self.timeout = timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium exited with status {self.proc.returncode}")
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its debugging pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its answer; events that arrive meanwhile are kept."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str) -> dict:
        """Wait for an event (or take it from those already received)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read(deadline))


def render_page(page: Path | str, *, width: int = 1100, timeout: float = 60.0) -> PageRender:
    """Open ``page`` (a file) in headless Chromium at ``width`` CSS pixels; measure it and screenshot it whole.

    Raises :class:`BrowserMissing` when no Chromium is installed.
    """
    binary = chromium_path()
    if binary is None:
        raise BrowserMissing("no Chromium found (" + ", ".join(CANDIDATES) + " or $FSAT_CHROMIUM); on Debian: "
                             "apt-get install chromium")
    url = Path(page).resolve().as_uri()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def pipes_on_3_and_4() -> None:
        # Duplicate first: one of the pipe ends may itself be descriptor 3 or 4.
        r, w = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(r, 3)
        os.dup2(w, 4)

    with tempfile.TemporaryDirectory(prefix="fsat-chromium-") as profile:
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check", "--mute-audio",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                f"--user-data-dir={profile}",
                "about:blank"]
        # close_fds=False: the pipes are moved to 3 and 4 in the child; Python's own descriptors are not inherited.
        proc = subprocess.Popen(args, preexec_fn=pipes_on_3_and_4, close_fds=False, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(proc, to_browser_w, from_browser_r, timeout)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Network", "Page", "Runtime"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                              "mobile": False}, session=session)
            pipe.call("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            measured = json.loads(pipe.call("Runtime.evaluate", {"expression": _MEASURE, "returnByValue": True},
                                            session=session)["result"]["value"])
            shot = pipe.call("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": measured["width"], "height": measured["height"], "scale": 1}},
                session=session)
            try:
                pipe.call("Browser.close")
            except (RuntimeError, TimeoutError, OSError):
                pass
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    requests = [e["params"]["request"]["url"] for e in pipe.events
                if e.get("method") == "Network.requestWillBeSent"]
    console = [str(e["params"].get("entry", {}).get("text", "")) for e in pipe.events
               if e.get("method") == "Log.entryAdded"]
    return PageRender(requests=requests, figures=measured["figures"], width=int(measured["width"]),
                      height=int(measured["height"]), text_length=int(measured["text"]), title=measured["title"],
                      screenshot=base64.b64decode(shot["data"]), console=console)


def main(argv: list[str] | None = None) -> int:
    """Render a page; print its figures and every request; optionally save the screenshot."""
    ap = argparse.ArgumentParser(prog="python -m engine.reporting.browser", description=main.__doc__)
    ap.add_argument("page", type=Path)
    ap.add_argument("--png", type=Path, help="write the whole page's screenshot here")
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args(argv)
    try:
        result = render_page(args.page, width=args.width)
    except BrowserMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.png:
        args.png.write_bytes(result.screenshot)
    print(json.dumps({"title": result.title, "size": [result.width, result.height], "figures": result.figures,
                      "requests": result.requests, "external": result.external_requests()}, indent=2))
    return 1 if result.external_requests() else 0


if __name__ == "__main__":
    sys.exit(main())
