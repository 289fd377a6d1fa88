"""Use the page of a running ``emotion serve`` in headless Chromium, as a person would, and screenshot it.

    python benchmarks/serve_page.py --url http://127.0.0.1:8000 --text "Thank you so much, I love it!" \\
        --out docs/serving-page.png

Opens ``<url>/``, types the text into the box, clicks Predict, waits until the bars and the explained
words are shown, writes the PNG and prints JSON: the labels drawn as predicted (``on``), every bar
(label, probability shown), the explained labels and their word count. Exits 2 with one line when
Chromium is missing or the page shows an error or nothing in ``--timeout`` seconds (the PNG is still written).

Chromium is driven over the DevTools protocol by ``deployments/ui_screenshots.py``'s ``Chromium`` (stdlib
only, no sandbox, every host but loopback unresolvable: the page must need nothing from outside).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments.ui_screenshots import Chromium, ShotError, find_chromium  # noqa: E402

PAGE_STATE_JS = """document.getElementById("status") === null ? "{}" : JSON.stringify({
  model: document.getElementById("model").textContent,
  status: document.getElementById("status").textContent,
  error: document.getElementById("error").textContent,
  on: [...document.querySelectorAll(".bar-row.on")].map(r => r.dataset.label),
  bars: [...document.querySelectorAll(".bar-row")].map(r => [r.dataset.label, r.querySelector(".prob").textContent]),
  explained: [...document.querySelectorAll(".explain h3")].map(h => h.textContent),
  words: document.querySelectorAll(".explain .tok").length,
})"""


def _state(browser: Chromium, session: str) -> dict:
    reply = browser.call("Runtime.evaluate", {"expression": PAGE_STATE_JS, "returnByValue": True}, session)
    state = {"model": "", "status": "", "error": "", "on": [], "bars": [], "explained": [], "words": 0}
    return {**state, **json.loads(reply["result"].get("value") or "{}")}  # {} until the page is there


def _wait(browser: Chromium, session: str, done, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    state = _state(browser, session)
    while not done(state) and time.monotonic() < deadline:
        time.sleep(0.2)
        state = _state(browser, session)
    return state


def use_page(browser: Chromium, url: str, text: str, png: Path, timeout: float = 60) -> dict:
    """Type ``text``, click Predict, wait for bars and words; write ``png``; return the page's state."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": browser.width, "height": browser.height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        browser.call("Page.navigate", {"url": url.rstrip("/") + "/"}, session)
        state = _wait(browser, session, lambda s: s["model"].startswith("run ") or s["model"].startswith("/"), timeout)
        if not state["model"].startswith("run "):
            raise ShotError(f"the page did not show the model in {timeout:.0f} s: {state['model']!r}")
        browser.call("Runtime.evaluate", {"expression": "document.getElementById('text').focus()"}, session)
        browser.call("Input.insertText", {"text": text}, session)  # typed into the focused box
        box = browser.call(
            "Runtime.evaluate",
            {
                "returnByValue": True,
                "expression": (
                    "(() => { const r = document.getElementById('go').getBoundingClientRect();"
                    " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
                ),
            },
            session,
        )["result"]["value"]
        for kind in ("mousePressed", "mouseReleased"):  # a real click on the button
            browser.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
                session,
            )
        state = _wait(browser, session, lambda s: s["status"] == "done" or bool(s["error"]), timeout)
        time.sleep(0.3)  # a last paint
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(base64.b64decode(shot["data"]))
        if state["error"] or state["status"] != "done":
            raise ShotError(
                f"the page did not finish in {timeout:.0f} s (status {state['status']!r}, "
                f"error {state['error']!r}); shot as it was: {png}"
            )
        return state
    finally:
        browser.call("Target.closeTarget", {"targetId": target})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--text", required=True, help="text to type")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--chromium", help="Chromium binary (default: chromium, chromium-browser or google-chrome)")
    parser.add_argument("--window-size", default="1000,1200", help="viewport WIDTH,HEIGHT")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for the page to answer")
    args = parser.parse_args(argv)
    try:
        browser = Chromium(find_chromium(args.chromium), args.url, args.window_size)
        try:
            state = use_page(browser, args.url, args.text, args.out, args.timeout)
        finally:
            browser.close()
    except ShotError as exc:
        print(f"serve_page: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"png": str(args.out), **state}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
