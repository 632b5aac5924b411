"""Load a local HTML file in headless Chromium and report what a person's browser would see.

Used by the report's tests (tests/unit/test_report_html.py) and meant for the lab's variant
on a real report: `load_page(path, probe=...)` opens the file, waits for its load event, and
returns the console errors, every request the page made (a self-contained page makes none but
its own), failed loads, what a JavaScript `probe` expression found in the DOM (run by the test
harness, not by the page: the page has no script), a PNG screenshot of the whole page at
the window's width, the same probe again
under print media at A4's printable width (`print_probe`), and the page printed to PDF.

How: the Chrome DevTools Protocol over `--remote-debugging-pipe` (file descriptors 3 and 4,
NUL-separated JSON), so there is no port to race for on a shared machine and no WebSocket
client to depend on. Every wait has a deadline; the browser is killed on the way out.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)
# A4's printable width at CSS's 96 px per inch: 210 mm less the report stylesheet's 10 mm margins.
A4_PRINT_PX = 718


def available() -> bool:
    return Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)


@dataclass
class PageReport:
    """What loading the page produced."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # URLs other than the page itself
    failed: list[str] = field(default_factory=list)
    probe: Any = None
    print_probe: Any = None
    screenshot: bytes = b""
    pdf: bytes = b""  # the page printed with its own @page rules (A4)

    @property
    def pdf_pages(self) -> int:
        return self.pdf.count(b"/Type /Page") - self.pdf.count(b"/Type /Pages")


class _Pipe:
    """The DevTools protocol over the browser's pipe: commands out, replies and events in."""

    def __init__(self, to_browser: int, from_browser: int, deadline: float) -> None:
        self.out, self.inp, self.deadline = to_browser, from_browser, deadline
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> None:
        """Until `method` has arrived for `session` (perhaps already, during a call)."""

        def seen(event: dict[str, Any]) -> bool:
            return event.get("method") == method and event.get("sessionId") == session

        while not any(seen(e) for e in self.events):
            self.events.append(self._read())

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer before the deadline")
            ready, _, _ = select.select([self.inp], [], [], left)
            if ready:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed


def _collect(report: PageReport, events: list[dict[str, Any]]) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            report.console_errors.append(
                " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            report.console_errors.append(str(params["exceptionDetails"].get("text")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            report.console_errors.append(str(params["entry"].get("text")))
        elif method == "Network.requestWillBeSent":
            url = str(params["request"]["url"])
            if url != report.url:
                report.requests.append(url)
        elif method == "Network.loadingFailed":
            report.failed.append(str(params.get("errorText")))


def _drive(pipe: _Pipe, report: PageReport, probe: str, size: tuple[int, int]) -> None:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session=session)
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}
    pipe.call("Emulation.setDeviceMetricsOverride", metrics, session)
    pipe.call("Page.navigate", {"url": report.url}, session)
    pipe.wait_for("Page.loadEventFired", session)
    evaluate = {"expression": probe, "returnByValue": True}
    report.probe = pipe.call("Runtime.evaluate", evaluate, session)["result"].get("value")
    # The whole page, however long: the viewport's width, the content's height.
    height = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
    clip = {"x": 0, "y": 0, "width": size[0], "height": max(size[1], height), "scale": 1}
    shot = pipe.call(
        "Page.captureScreenshot",
        {"format": "png", "clip": clip, "captureBeyondViewport": True},
        session,
    )
    report.screenshot = base64.b64decode(shot["data"])
    pipe.call("Emulation.setEmulatedMedia", {"media": "print"}, session)
    pipe.call("Emulation.setDeviceMetricsOverride", {**metrics, "width": A4_PRINT_PX}, session)
    report.print_probe = pipe.call("Runtime.evaluate", evaluate, session)["result"].get("value")
    pdf = pipe.call("Page.printToPDF", {"preferCSSPageSize": True}, session)
    report.pdf = base64.b64decode(pdf["data"])


def load_page(
    path: Path, *, probe: str, size: tuple[int, int] = (1280, 2400), timeout: float = 90.0
) -> PageReport:
    """Open `path` in a fresh headless Chromium profile and report on it (see the module)."""
    report = PageReport(url=path.resolve().as_uri())
    profile = tempfile.mkdtemp(prefix="broker-chromium-")
    with tempfile.TemporaryFile() as log:
        try:
            _run(report, probe, size, timeout, [f"--user-data-dir={profile}"], log)
        finally:
            shutil.rmtree(profile, ignore_errors=True)
    return report


def _run(
    report: PageReport,
    probe: str,
    size: tuple[int, int],
    timeout: float,
    extra: list[str],
    log: IO[bytes],
) -> None:
    """Start the browser on its pipes, drive it, and always reap it."""
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    # bash puts the pipe ends on 3 and 4, where --remote-debugging-pipe expects them (dash
    # cannot redirect from a descriptor above 9, and under pytest ours are above it).
    command = f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w}'
    proc = subprocess.Popen(
        ["/bin/bash", "-c", command, CHROMIUM, *FLAGS, *extra, "about:blank"],
        pass_fds=(commands_r, replies_w),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    os.close(commands_r)
    os.close(replies_w)
    pipe = _Pipe(commands_w, replies_r, time.monotonic() + timeout)
    try:
        _drive(pipe, report, probe, size)
        _collect(report, pipe.events)
        pipe.call("Browser.close")
    except (TimeoutError, RuntimeError) as exc:
        log.seek(0)
        tail = log.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"headless Chromium failed: {exc}; its output ended:\n{tail}") from exc
    finally:
        os.close(commands_w)
        os.close(replies_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
