"""The page at ``GET /`` in headless Chromium (Debian's ``chromium``): a text typed and Predict clicked shows one
bar per label, the predicted ones drawn as such, and the words that drove them; nothing is fetched from outside.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.serve_page import use_page  # noqa: E402
from deployments.ui_screenshots import Chromium, ShotError, find_chromium  # noqa: E402

pytestmark = pytest.mark.slow  # tiny training runs, a real server process and a browser

TEXT = "happy lovely furious mad day"


@pytest.fixture(scope="module")
def browser(served):
    try:
        binary = find_chromium(None)
    except ShotError as exc:
        pytest.skip(str(exc))
    chromium = Chromium(binary, served.url, "1000,900")
    yield chromium
    chromium.close()


def test_the_page_shows_the_predicted_emotions_and_the_words(served, browser, tmp_path):
    page = httpx.get(f"{served.url}/", timeout=10).text
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # self-contained
    expected = httpx.post(f"{served.url}/predict", json={"texts": [TEXT]}, timeout=30).json()
    predicted = expected["predictions"][0]
    assert predicted["labels"], "the tiny model should predict a label for this training-like text"

    png = tmp_path / "page.png"
    state = use_page(browser, served.url, TEXT, png, timeout=120)

    assert state["error"] == "" and state["status"] == "done"
    assert state["model"].startswith(f"run {expected['run_id']}")
    assert sorted(state["on"]) == sorted(predicted["labels"])
    shown = dict(state["bars"])
    assert set(shown) == set(expected["labels"])
    for name, p in predicted["probabilities"].items():
        assert shown[name] == f"{p:.3f}"
    assert state["explained"] and state["words"] >= 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
