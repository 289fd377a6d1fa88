"""The HTTP JSON API of ``emotion serve`` (FastAPI): a run's calibrated predictions and SHAP explanations.

Routes
- ``POST /predict`` ``{"texts": [str, ...]}`` -> per text the labels at the calibrated thresholds and the
  calibrated probabilities (``predict.RunPredictor``: the numbers ``emotion predict`` writes).
- ``POST /explain`` ``{"text": str}`` -> SHAP token weights of the most probable labels (``explain.explain_texts``
  on the calibrated probabilities; ``explain_max_evals`` model calls, ``explain_timeout_s`` at most).
- ``GET /health``, ``GET /model`` (run id, dataset, labels, metrics, code version, calibration), ``GET /`` (a page).

Errors are JSON ``{"detail": "..."}``: 413 over a limit (body bytes, texts, characters), 415 not JSON,
400 invalid UTF-8, 422 malformed JSON or wrong fields, 429 too many explanations waiting, 500 a failed
model call (the server keeps serving), 504 an explanation out of time.

With ``champion:<dataset>`` a background task re-reads the registry every ``reload_every_s``; a new
champion is loaded beside the old model and swapped in by one assignment. A request keeps the model it
was admitted with, so requests in flight finish on the old one; none is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from emotion_core.serving.batcher import MicroBatcher
from emotion_core.serving.models import ChampionSource, ServedModel, model_info
from emotion_core.serving.settings import ServeSettings

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr]
    """Texts to score, in order; the answer has one prediction per text."""


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr
    """The one text to explain."""


@dataclass
class ServerState:
    """What the routes share: the model in service (swapped whole), the batcher, the champion watch."""

    model: ServedModel
    settings: ServeSettings
    champion: ChampionSource | None = None
    batcher: MicroBatcher | None = None
    explaining: int = 0
    swaps: int = 0
    last_check: float | None = None
    last_check_error: str | None = None
    started_at: float = field(default_factory=time.time)
    tokenizers: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ request bodies


async def read_json(request: Request, settings: ServeSettings):
    """The request's JSON value: 415 not ``application/json``, 413 too large, 400 not UTF-8, 422 not JSON."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, f"content-type must be application/json, got {kind or 'none'!r}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise HTTPException(413, f"body of {declared} bytes is over the limit of {settings.max_body_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():  # counted while read: a body without content-length is bounded too
        body += chunk
        if len(body) > settings.max_body_bytes:
            raise HTTPException(413, f"body is over the limit of {settings.max_body_bytes} bytes")
    if not body.strip():
        raise HTTPException(422, "empty body: expected a JSON object")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"body is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits, nesting deeper than Python's stack
        raise HTTPException(422, f"malformed JSON: {type(exc).__name__}: {str(exc)[:200]}") from None


def parse(schema: type[BaseModel], value):
    """``value`` validated by ``schema``; 422 naming each wrong field (the first five)."""
    if not isinstance(value, dict):
        raise HTTPException(
            422, f"expected a JSON object with the fields {', '.join(schema.model_fields)}, got {type(value).__name__}"
        )
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise HTTPException(422, "; ".join(problems) + more) from None


def check_text(text: str, where: str, max_chars: int, setting: str) -> None:
    if not text.strip():  # refused as emotion predict refuses an empty text in a file
        raise HTTPException(422, f"{where} is empty or only whitespace; send a text")
    if len(text) > max_chars:
        raise HTTPException(413, f"{where} has {len(text)} characters, over the limit of {max_chars} ({setting})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") passes JSON but is not text
        raise HTTPException(422, f"{where}: character {exc.start} is a lone surrogate, not Unicode text") from None


# ---------------------------------------------------------------------------------------- inference


def predictions(model: ServedModel, probs, predicted) -> list[dict]:
    names = model.labels
    return [
        {
            "labels": [n for n, on in zip(names, row_on) if on],
            "probabilities": {n: float(p) for n, p in zip(names, row_p)},
        }
        for row_p, row_on in zip(probs, predicted)
    ]


def explain_one(state: ServerState, model: ServedModel, text: str, loop: asyncio.AbstractEventLoop) -> dict:
    """SHAP weights of ``text`` (runs in a thread); the masked texts are scored through the batcher."""
    from emotion_core.explain import explain_texts, run_tokenizer

    def predict_proba(texts) -> object:
        future = asyncio.run_coroutine_threadsafe(state.batcher.submit(model, [str(t) for t in texts]), loop)
        return future.result()[0]

    if model.run_id not in state.tokenizers:  # the masker's own copy: a tokenizer is not shared across threads
        state.tokenizers = {model.run_id: run_tokenizer(model.run.folder)}
    settings = state.settings
    result = explain_texts(
        predict_proba,
        [text],
        model.labels,
        max_evals=settings.explain_max_evals,
        top_labels=settings.explain_top_labels,
        tokenizer=state.tokenizers[model.run_id],
        batch_size=settings.batch_size,
    )
    row = result["texts"][0]
    return {
        "run_id": model.run_id,
        "calibrated": model.predictor.calibrated,
        "text": text,
        "seconds": row["seconds"],
        "evaluations": row["evaluations"],
        "max_evals": result["max_evals"],
        "masker": result["masker"],
        "probabilities": row["probs"],
        "explanations": row["labels"],
    }


# ------------------------------------------------------------------------------------ champion watch


async def watch_champion(state: ServerState) -> None:
    """Every ``reload_every_s``: read the registry; a new champion is loaded, then swapped in."""
    settings = state.settings
    while True:
        await asyncio.sleep(settings.reload_every_s)
        try:
            run_id = await asyncio.to_thread(state.champion.current)
            if run_id != state.model.run_id:
                log.info(
                    "champion of %s is now %s (serving %s): loading it", state.champion.key, run_id, state.model.run_id
                )
                new = await asyncio.to_thread(
                    state.champion.load, run_id, calibration=settings.calibration, batch_size=settings.batch_size
                )
                old, state.model = state.model, new  # one assignment: a request sees the old or the new model
                state.swaps += 1
                log.info("now serving %s (was %s)", new.run_id, old.run_id)
            state.last_check, state.last_check_error = time.time(), None
        except Exception as exc:  # noqa: BLE001 - a registry or run problem: keep serving the model we have
            state.last_check, state.last_check_error = time.time(), f"{type(exc).__name__}: {exc}"
            log.warning("champion check failed, still serving %s: %s", state.model.run_id, exc)


# ------------------------------------------------------------------------------------------ routes

router = APIRouter()


def served_state(request: Request) -> ServerState:
    """The ``ServerState`` of the app that received ``request`` (set by ``create_app``)."""
    return request.app.state.serve


@router.post("/predict")
async def predict(request: Request) -> dict:
    state = served_state(request)
    limits = state.settings
    value = await read_json(request, limits)
    texts = value.get("texts") if isinstance(value, dict) else None
    if isinstance(texts, list) and len(texts) > limits.max_texts:  # before validating 10,000 items
        raise HTTPException(413, f"{len(texts)} texts, over the limit of {limits.max_texts} per request (max_texts)")
    body = parse(PredictRequest, value)
    if not body.texts:
        raise HTTPException(422, "texts: the list is empty; send at least one text")
    for i, text in enumerate(body.texts):
        check_text(text, f"texts.{i}", limits.max_chars, "max_chars")
    served = state.model  # this request's model, whatever a champion swap does meanwhile
    try:
        probs, predicted = await state.batcher.submit(served, body.texts)
    except Exception as exc:  # noqa: BLE001 - logged by the batcher; the server keeps serving
        raise HTTPException(500, f"inference failed: {type(exc).__name__}: {exc}") from None
    return {
        "run_id": served.run_id,
        "calibrated": served.predictor.calibrated,
        "labels": served.labels,
        "predictions": predictions(served, probs, predicted),
    }


@router.post("/explain")
async def explain(request: Request) -> dict:
    state = served_state(request)
    limits = state.settings
    body = parse(ExplainRequest, await read_json(request, limits))
    check_text(body.text, "text", limits.explain_max_chars, "explain_max_chars")
    if state.explaining >= limits.explain_queue:
        raise HTTPException(
            429, f"{state.explaining} explanations are running or waiting (explain_queue); retry in a few seconds"
        )
    loop = asyncio.get_running_loop()
    state.explaining += 1
    work = loop.run_in_executor(None, explain_one, state, state.model, body.text, loop)
    work.add_done_callback(lambda _: setattr(state, "explaining", state.explaining - 1))  # when it really ends
    try:
        return await asyncio.wait_for(asyncio.shield(work), limits.explain_timeout_s)
    except TimeoutError:
        raise HTTPException(
            504, f"the explanation took over {limits.explain_timeout_s:g} s (explain_timeout_s); try a shorter text"
        ) from None
    except Exception as exc:  # noqa: BLE001
        log.exception("explanation failed")
        raise HTTPException(500, f"explanation failed: {type(exc).__name__}: {exc}") from None


@router.get("/health")
async def health(request: Request) -> dict:
    state = served_state(request)
    return {
        "status": "ok",
        "run_id": state.model.run_id,
        "uptime_s": round(time.time() - state.started_at, 3),
        "requests": state.batcher.requests,
        "model_calls": state.batcher.batches,
    }


@router.get("/model")
async def model_route(request: Request) -> dict:
    state = served_state(request)
    info = model_info(state.model)
    if state.champion is not None:
        info["champion"] = {
            "dataset_key": state.champion.key,
            "reload_every_s": state.settings.reload_every_s,
            "swaps": state.swaps,
            "last_check": state.last_check,
            "last_check_error": state.last_check_error,
        }
    info["limits"] = state.settings.model_dump()
    return info


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the batcher (and the champion watch) with the server; stop them when it shuts down."""
    state: ServerState = app.state.serve
    state.batcher = MicroBatcher(
        max_batch_texts=state.settings.max_batch_texts, max_wait_s=state.settings.max_wait_ms / 1000
    )
    state.batcher.start()
    watch = asyncio.create_task(watch_champion(state)) if state.champion is not None else None
    yield
    if watch is not None:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    await state.batcher.stop()


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Any unhandled error: logged with its traceback, answered as JSON 500; the server keeps serving."""
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def create_app(
    model: ServedModel, settings: ServeSettings | None = None, champion: ChampionSource | None = None
) -> FastAPI:
    """The API serving ``model``; with ``champion``, the champion of its dataset key, reloaded on change."""
    app = FastAPI(title="emotion serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = ServerState(model=model, settings=settings or ServeSettings(), champion=champion)
    app.add_exception_handler(Exception, internal_error)
    app.include_router(router)
    return app
