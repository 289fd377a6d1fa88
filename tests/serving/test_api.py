"""``emotion serve`` over real HTTP on 127.0.0.1: the numbers of ``emotion predict``, explanations, batching across
clients, a corpus of bad requests (each a clear 4xx, the server answering afterwards), and a failing model call.
"""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import polars as pl
import pytest
from serve_helpers import EMOTION, ServeProcess, free_port

pytestmark = pytest.mark.slow  # tiny training runs and a real server process

TEXTS = [
    "what a happy day",
    "so mad at this",
    "calm fine day",
    "happy and mad",
    "nothing at all",
    "😀 happy\tmad ünïcödé",
]


def post(server, path: str, payload) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=payload, timeout=60)


def test_predict_gives_the_numbers_of_emotion_predict(served, tiny_store, tmp_path):
    data = tmp_path / "texts.csv"
    pl.DataFrame({"id": [f"t{i}" for i in range(len(TEXTS))], "text": TEXTS}).write_csv(data)
    out = tmp_path / "predicted.csv"
    done = subprocess.run(
        [EMOTION, "predict", str(tiny_store.runs[0]), str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = pl.read_csv(out)

    response = post(served, "/predict", {"texts": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["run_id"] == tiny_store.run_ids[0] and body["calibrated"] is True
    assert body["labels"] == ["joy", "anger"] and len(body["predictions"]) == len(TEXTS)
    for row, prediction in zip(expected.iter_rows(named=True), body["predictions"]):
        for name in body["labels"]:
            # The CSV rounds to 6 decimals: equal up to that rounding.
            assert abs(prediction["probabilities"][name] - row[f"{name}_prob"]) <= 5e-7 + 1e-12, (name, row)
        assert prediction["labels"] == [n for n in body["labels"] if row[n] == 1], row


def test_model_and_health_describe_the_run(served, tiny_store):
    info = httpx.get(f"{served.url}/model", timeout=10).json()
    manifest = json.loads((tiny_store.runs[0] / "manifest.json").read_text())
    calibration = json.loads((tiny_store.runs[0] / "calibration.json").read_text())
    assert info["run_id"] == tiny_store.run_ids[0] and info["dataset"] == "tabular"
    assert info["labels"] == ["joy", "anger"] and info["calibrated"] is True
    assert info["code"]["git_commit"] == manifest["git"]["commit"]
    assert info["code"]["code_version"] == manifest["code_version"] and manifest["code_version"].startswith("sha256:")
    assert info["metrics"] == manifest["summary"]
    assert info["thresholds"] == calibration["thresholds"] and info["temperatures"] == calibration["temperatures"]
    assert info["limits"]["max_texts"] == 256
    health = httpx.get(f"{served.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["run_id"] == tiny_store.run_ids[0]


def test_explain_gives_token_weights_that_add_up(served):
    response = post(served, "/explain", {"text": "so happy and so mad today"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["label"] for e in body["explanations"]] == sorted(
        body["probabilities"], key=body["probabilities"].get, reverse=True
    )
    for entry in body["explanations"]:
        assert "".join(entry["tokens"]).strip() == "so happy and so mad today"
        assert len(entry["values"]) == len(entry["tokens"])
        # SHAP's efficiency: the weights plus the masked text's probability give the text's (calibrated) probability.
        assert abs(sum(entry["values"]) + entry["base_value"] - entry["prob"]) < 1e-6
        assert entry["prob"] == pytest.approx(body["probabilities"][entry["label"]])
    weights = dict(zip(body["explanations"][0]["tokens"], body["explanations"][0]["values"]))
    assert any(abs(v) > 1e-4 for v in weights.values())  # the words did move the prediction


def test_concurrent_clients_are_batched_and_get_their_own_rows(served):
    texts = [f"{'happy' if i % 2 else 'calm'} {'mad' if i % 3 == 0 else 'fine'} {i}" for i in range(48)]
    alone = {t: post(served, "/predict", {"texts": [t]}).json()["predictions"][0] for t in texts[:6]}
    before = httpx.get(f"{served.url}/health", timeout=10).json()
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda t: post(served, "/predict", {"texts": [t]}), texts))
    after = httpx.get(f"{served.url}/health", timeout=10).json()
    assert [a.status_code for a in answers] == [200] * len(texts)
    for text, answer in zip(texts[:6], answers[:6]):
        got, want = answer.json()["predictions"][0], alone[text]
        assert got["labels"] == want["labels"]
        assert np.allclose(list(got["probabilities"].values()), list(want["probabilities"].values()), atol=1e-6)
    requests, calls = after["requests"] - before["requests"], after["model_calls"] - before["model_calls"]
    assert requests == len(texts) and calls < requests, (requests, calls)  # several requests shared a model call


# ------------------------------------------------------------------------------------- bad requests

JSON = {"content-type": "application/json"}
BAD_REQUESTS = [  # case, method, path, headers, body (bytes), expected status
    ("empty list", "POST", "/predict", JSON, b'{"texts": []}', 422),
    ("1 MB text", "POST", "/predict", JSON, json.dumps({"texts": ["a" * 1_000_000]}).encode(), 413),
    ("5 MB body", "POST", "/predict", JSON, json.dumps({"texts": ["a" * 9_000] * 580}).encode(), 413),
    ("10,000 texts", "POST", "/predict", JSON, json.dumps({"texts": ["hi"] * 10_000}).encode(), 413),
    ("text of 10,001 chars", "POST", "/predict", JSON, json.dumps({"texts": ["b" * 10_001]}).encode(), 413),
    ("whitespace-only text", "POST", "/predict", JSON, b'{"texts": ["ok", " \\n "]}', 422),
    ("numbers as texts", "POST", "/predict", JSON, b'{"texts": [1, 2]}', 422),
    ("texts is a string", "POST", "/predict", JSON, b'{"texts": "hello"}', 422),
    ("texts is null", "POST", "/predict", JSON, b'{"texts": null}', 422),
    ("body is null", "POST", "/predict", JSON, b"null", 422),
    ("body is a list", "POST", "/predict", JSON, b'["hello"]', 422),
    ("nested lists", "POST", "/predict", JSON, b'{"texts": [["a", "b"]]}', 422),
    ("missing field", "POST", "/predict", JSON, b'{"text": ["a"]}', 422),
    ("extra field", "POST", "/predict", JSON, b'{"texts": ["a"], "top_k": 3}', 422),
    ("invalid UTF-8", "POST", "/predict", JSON, b'{"texts": ["caf\xe9 \xff"]}', 400),
    ("lone surrogate", "POST", "/predict", JSON, b'{"texts": ["\\ud800 hi"]}', 422),
    ("malformed JSON", "POST", "/predict", JSON, b'{"texts": ["a",', 422),
    ("empty body", "POST", "/predict", JSON, b"", 422),
    ("huge float", "POST", "/predict", JSON, b'{"texts": [1e999999]}', 422),
    ("5,000-digit integer", "POST", "/predict", JSON, b'{"texts": [' + b"9" * 5000 + b"]}", 422),
    ("nesting 100,000 deep", "POST", "/predict", JSON, b"[" * 100_000 + b"]" * 100_000, 422),
    ("text/plain body", "POST", "/predict", {"content-type": "text/plain"}, b'{"texts": ["a"]}', 415),
    ("no content-type", "POST", "/predict", {}, b'{"texts": ["a"]}', 415),
    ("form body", "POST", "/predict", {"content-type": "application/x-www-form-urlencoded"}, b"texts=a", 415),
    ("unknown route", "POST", "/nope", JSON, b'{"texts": ["a"]}', 404),
    ("GET /predict", "GET", "/predict", {}, b"", 405),
    ("explain: list as text", "POST", "/explain", JSON, b'{"text": ["a"]}', 422),
    ("explain: 2,001 chars", "POST", "/explain", JSON, json.dumps({"text": "c " * 1001}).encode(), 413),
    ("explain: missing text", "POST", "/explain", JSON, b"{}", 422),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "headers", "body", "status"), BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS]
)
def test_bad_request_gets_a_clear_4xx(served, case, method, path, headers, body, status):
    response = httpx.request(method, f"{served.url}{path}", headers=headers, content=body, timeout=60)
    assert response.status_code == status, (case, response.status_code, response.text[:500])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail, response.text[:500]


def test_server_still_answers_after_the_corpus(served):
    assert served.alive(), served.output()
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200
    response = post(served, "/predict", {"texts": ["happy happy day", "mad"]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2, response.text


def test_corpus_has_the_cases_the_issue_names():
    names = {row[0] for row in BAD_REQUESTS}
    assert len(BAD_REQUESTS) >= 15
    assert {"empty list", "1 MB text", "numbers as texts", "invalid UTF-8", "10,000 texts", "unknown route"} <= names


# ------------------------------------------------------------------------------- a failing model call


class FailsOnBoom:
    """The run's real predictor, except that a model call with the text "boom" raises (a stand-in for a bug)."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def predict(self, texts):
        if "boom" in texts:
            raise RuntimeError("the model broke on 'boom'")
        return self.real.predict(texts)


def test_a_failing_model_call_gives_500_and_the_server_keeps_serving(tiny_store):
    import uvicorn

    from emotion_core.serving.app import create_app
    from emotion_core.serving.models import ServedModel, load_model
    from emotion_core.serving.settings import ServeSettings

    real = load_model(tiny_store.runs[0])
    model = ServedModel(real.run, FailsOnBoom(real.predictor), "test")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, ServeSettings(max_wait_ms=50)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        # Sent together: "boom" shares a batch with good texts; only its own request fails.
        texts = ["happy", "boom", "mad", "calm"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda t: httpx.post(f"{url}/predict", json={"texts": [t]}, timeout=30), texts))
        statuses = {t: a.status_code for t, a in zip(texts, answers)}
        assert statuses == {"happy": 200, "boom": 500, "mad": 200, "calm": 200}, statuses
        assert "inference failed: RuntimeError: the model broke on 'boom'" in answers[1].json()["detail"]
        assert httpx.post(f"{url}/predict", json={"texts": ["happy again"]}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_connections_over_the_limit_get_503_and_the_server_recovers(tiny_store):
    import socket

    server = ServeProcess(str(tiny_store.runs[0]), "--max-connections", "2").wait_ready()
    try:
        # uvicorn counts the open connections, the asking one included: one idle connection fills a limit of 2.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10):
            refused = post(server, "/predict", {"texts": ["happy"]})
            assert refused.status_code == 503, refused.text
        for _ in range(50):  # the idle connection's close reaches the server shortly after
            answer = post(server, "/predict", {"texts": ["happy"]})
            if answer.status_code == 200:
                break
            threading.Event().wait(0.1)
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{server.url}/model", timeout=10).json()["limits"]["max_connections"] == 2
    finally:
        server.stop()
