"""A real browser for the tests: headless Chromium (Debian's ``chromium`` package) driven over
the Chrome DevTools protocol, enough to load a page and evaluate JavaScript in it (e.g. whether
every image decoded: ``naturalWidth > 0``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def evaluate_in_page(url: str, expression: str, *, wait_for: str = "true",
                     timeout: float = 60.0):
    """Open ``url`` in a fresh headless Chromium, wait until the JavaScript ``wait_for`` is
    truthy, then return the JSON value of ``expression``."""
    assert CHROMIUM, "chromium is not installed (make test installs it: apt-get install chromium)"
    profile = Path(tempfile.mkdtemp(prefix="twostep-chromium-"))
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                             "--remote-debugging-address=127.0.0.1",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}",
                             "--allow-file-access-from-files", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, proc, timeout)
        target = json.loads(urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank",
                                   method="PUT"), timeout=10).read())
        return asyncio.run(_run(target["webSocketDebuggerUrl"], url, expression, wait_for,
                                timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().splitlines()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


async def _run(ws_url: str, url: str, expression: str, wait_for: str, timeout: float):
    import websockets

    async with websockets.connect(ws_url, max_size=1 << 26) as ws:
        counter = 0

        async def call(method: str, **params):
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == counter:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

        async def value(js: str):
            result = await call("Runtime.evaluate", expression=js, returnByValue=True,
                                awaitPromise=True)
            if "exceptionDetails" in result:
                raise RuntimeError(f"{js}: {result['exceptionDetails']}")
            return result["result"].get("value")

        await call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not await value(f"document.readyState === 'complete' && !!({wait_for})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: {wait_for} never held")
            await asyncio.sleep(0.25)
        return await value(expression)
