"""PNG screenshots of the Prefect UI in headless Chromium: a work pool's Workers tab and an artifact.

    python deployments/ui_screenshots.py --ui-url http://127.0.0.1:4200 --pool gpu \\
        --artifact-key comparison-cpu-demo --out-dir shots/

- Writes ``<out-dir>/work-pool-<pool>-workers.png`` and ``<out-dir>/artifact-<key>.png`` (the key's latest
  version) and prints their paths; pool, workers and artifact are looked up through ``<ui-url>/api`` first.
- A page is shot once it shows them, with no spinner and no page transition running (Chromium driven over the
  DevTools protocol, ``--remote-debugging-pipe``; why: docs/design.md, "Tools").
- Exits 2 with one line when Chromium is missing, the API does not answer or is another one, the pool or
  artifact does not exist, or a page does not render in ``--timeout`` seconds (its PNG is still written).

Limits: a self-hosted Prefect 3 server without auth, the classic UI routes; Chromium without sandbox, resolving
only localhost and the UI's host; one viewport (``--window-size``) per shot.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import httpx

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# True once the page shows every `all` text and one of the `any` texts (if given), with no spinner
# and no Vue <Transition> class left (the router view fades in after its data arrives).
READY_JS = """(() => {
  const want = %s, text = document.body ? document.body.innerText : "";
  return document.readyState === "complete"
    && want.all.every(t => text.includes(t))
    && (want.any.length === 0 || want.any.some(t => text.includes(t)))
    && !document.querySelector(".p-loading-icon, [class*='-enter-active'], [class*='-leave-active']");
})()"""


class ShotError(Exception):
    """A problem the user can fix; printed as one line."""


def find_chromium(explicit: str | None) -> str:
    for name in [explicit] if explicit else CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    wanted = explicit or " / ".join(CHROMIUM_NAMES)
    raise ShotError(
        f"Chromium not found ({wanted}); install it (Debian: apt-get install chromium) or pass --chromium PATH"
    )


class Prefect:
    """The few API reads the shots need."""

    def __init__(self, ui: str):
        self.ui = ui
        self.api = f"{ui}/api"
        self.client = httpx.Client(base_url=self.api, timeout=30)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ShotError(f"Prefect API at {self.api} did not answer: {exc}") from exc

    def check_ui_api(self) -> None:
        """The UI calls the API named in /ui-settings; `prefect server start --port P` leaves it at port 4200."""
        response = self._call("GET", f"{self.ui}/ui-settings")
        response.raise_for_status()
        api_url = urljoin(self.ui + "/", response.json().get("api_url") or "/api").rstrip("/")
        if api_url != f"{self.ui}/api":
            raise ShotError(
                f"the UI at {self.ui} talks to {api_url}, not {self.ui}/api; "
                f"start the server with PREFECT_UI_API_URL={self.ui}/api"
            )

    def worker_names(self, pool: str) -> list[str]:
        response = self._call("POST", f"/work_pools/{quote(pool, safe='')}/workers/filter", json={"limit": 10})
        if response.status_code == 404:
            raise ShotError(f"work pool {pool!r} not found at {self.api}")
        response.raise_for_status()
        return [w["name"] for w in response.json()]

    def latest_artifact_id(self, key: str) -> str:
        """The newest artifact with this key: latest/filter returns the key's collection, whose `latest_id` it is."""
        response = self._call(
            "POST", "/artifacts/latest/filter", json={"artifacts": {"key": {"any_": [key]}}, "limit": 1}
        )
        response.raise_for_status()
        found = response.json()
        if not found:
            raise ShotError(f"artifact with key {key!r} not found at {self.api}")
        return found[0]["latest_id"]


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe (it reads fd 3, writes fd 4): stdlib only."""

    def __init__(self, binary: str, ui_url: str, window: str):
        self.width, self.height = (int(v) for v in window.split(","))
        self.profile = tempfile.TemporaryDirectory(prefix="ui-shot-")
        hosts = sorted({"127.0.0.1", "localhost", urlsplit(ui_url).hostname})
        # Every other name fails to resolve: no calls home, nothing fetched but the UI itself.
        rules = "MAP * ~NOTFOUND, " + ", ".join(f"EXCLUDE {h}" for h in hosts)
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile.name}",
            f"--host-resolver-rules={rules}",
            "--hide-scrollbars",
            f"--window-size={window}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def wire_pipes():  # in the child: via fds >= 10 first, so 3 and 4 cannot overwrite each other
            high_in, high_out = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, preexec_fn=wire_pipes, pass_fds=(3, 4)
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:  # anything else is an event: not needed
                    if "error" in reply:
                        raise ShotError(f"Chromium: {method} failed: {reply['error'].get('message')}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise ShotError(f"Chromium did not answer {method} in {timeout:.0f} s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise ShotError(
                    f"Chromium exited ({self.process.poll()}): {self.log.read().decode(errors='replace')[-500:]}"
                )
            self._buffer += chunk

    def shoot(self, url: str, png: Path, want_all: list[str], want_any: list[str], timeout: float) -> bool:
        """Writes the PNG; False if the page had not rendered what was wanted after `timeout` seconds."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            # The window size includes the browser frame; the viewport is set exactly.
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            self.call("Page.navigate", {"url": url}, session)
            ready_js = READY_JS % json.dumps({"all": want_all, "any": want_any})
            deadline, ready = time.monotonic() + timeout, False
            while not ready and time.monotonic() < deadline:
                time.sleep(0.5)
                ready = (
                    self.call("Runtime.evaluate", {"expression": ready_js, "returnByValue": True}, session)[
                        "result"
                    ].get("value")
                    is True
                )
            time.sleep(0.3)  # a last paint after the transition class is removed
            shot = self.call("Page.captureScreenshot", {"format": "png"}, session)
            png.write_bytes(base64.b64decode(shot["data"]))
            return ready
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except ShotError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)
        self.log.close()
        self.profile.cleanup()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ui-url", required=True, help="the Prefect UI, e.g. http://127.0.0.1:4200 (API at <ui-url>/api)"
    )
    parser.add_argument("--pool", required=True, help="work pool whose Workers tab is shot")
    parser.add_argument("--artifact-key", required=True, help="artifact key; its latest version is shot")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument(
        "--chromium", help="Chromium binary (default: chromium, chromium-browser or google-chrome on PATH)"
    )
    parser.add_argument("--window-size", default="1600,1000", help="viewport WIDTH,HEIGHT")
    parser.add_argument("--timeout", type=float, default=60, help="seconds each page gets to render")
    args = parser.parse_args(argv)

    ui = args.ui_url.rstrip("/")
    try:
        binary = find_chromium(args.chromium)
        prefect = Prefect(ui)
        try:
            prefect.check_ui_api()
            workers = prefect.worker_names(args.pool)
            artifact_id = prefect.latest_artifact_id(args.artifact_key)
        finally:
            prefect.client.close()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        shots = [  # url, png, texts that must all show, texts of which one must show
            (
                f"{ui}/work-pools/work-pool/{quote(args.pool, safe='')}?tab=Workers",
                args.out_dir / f"work-pool-{slug(args.pool)}-workers.png",
                [args.pool],
                workers,
            ),
            (
                f"{ui}/artifacts/artifact/{artifact_id}",
                args.out_dir / f"artifact-{slug(args.artifact_key)}.png",
                [args.artifact_key],
                [],
            ),
        ]
        browser = Chromium(binary, ui, args.window_size)
        try:
            for url, png, want_all, want_any in shots:
                if not browser.shoot(url, png, want_all, want_any, args.timeout):
                    raise ShotError(
                        f"{url} did not render {want_all + want_any[:1]} in {args.timeout:.0f} s; shot as it was: {png}"
                    )
                print(png)
        finally:
            browser.close()
    except (ShotError, httpx.HTTPStatusError) as exc:
        print(f"ui_screenshots: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
