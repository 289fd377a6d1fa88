"""Micro-batching: the texts of concurrent requests are scored together, in one inference thread.

Features
- ``submit(model, texts)`` queues a request's texts and awaits its rows of ``model.predictor.predict``.
- One worker task takes the first waiting request, lets others join it for at most ``max_wait_s``
  (up to ``max_batch_texts`` texts), and runs one model call in a single-thread executor: the event
  loop never blocks, and the model is only ever called from one thread.
- A batch holds requests of one ``model`` only: after a champion swap, requests admitted before it
  finish on the old model, later ones on the new one; the old model is freed with its last request.
- An exception in a model call fails the requests of that batch only (each gets the exception).

Limits: one request's texts are never split (a request larger than ``max_batch_texts`` is a batch
of its own); a client that goes away still has its texts scored (its result is dropped).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Request:
    model: object
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Gathers requests into model calls of at most ``max_batch_texts`` texts; see the module docstring."""

    def __init__(self, *, max_batch_texts: int = 64, max_wait_s: float = 0.005) -> None:
        self.max_batch_texts, self.max_wait_s = max_batch_texts, max_wait_s
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None
        self._held: _Request | None = None  # taken from the queue, but for the next batch
        self.batches = self.requests = 0  # model calls made, requests scored (for /health)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, model, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, predicted)`` of ``texts`` by ``model`` (a ``ServedModel``), scored in a shared batch."""
        future = asyncio.get_running_loop().create_future()
        self.requests += 1
        await self.queue.put(_Request(model, texts, future))
        return await future

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            held, self._held = self._held, None
            return held
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout) if timeout > 0 else self.queue.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            return None

    async def _gather(self) -> list[_Request]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        batch, size = [first], len(first.texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_texts:
            item = await self._next(deadline - loop.time())
            if item is None:
                break
            if item.model is not first.model or size + len(item.texts) > self.max_batch_texts:
                self._held = item  # another model (a swap happened) or too many texts: the next batch
                break
            batch.append(item)
            size += len(item.texts)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            texts = [t for item in batch for t in item.texts]
            try:
                probs, predicted = await loop.run_in_executor(self.executor, batch[0].model.predictor.predict, texts)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, which answer 500
                if len(batch) > 1:  # one request's texts may be the cause: score each alone, so only it fails
                    for item in batch:
                        await self._score_alone(item)
                    continue
                log.exception("model call of %d texts failed", len(texts))
                _settle(batch[0], exception=exc)
                continue
            self.batches += 1
            start = 0
            for item in batch:
                end = start + len(item.texts)
                _settle(item, result=(probs[start:end], predicted[start:end]))
                start = end

    async def _score_alone(self, item: _Request) -> None:
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self.executor, item.model.predictor.predict, item.texts
            )
        except Exception as exc:  # noqa: BLE001
            log.exception("model call of %d texts failed", len(item.texts))
            _settle(item, exception=exc)
        else:
            self.batches += 1
            _settle(item, result=result)


def _settle(item: _Request, *, result=None, exception: Exception | None = None) -> None:
    if item.future.done():  # cancelled: the client went away
        return
    if exception is not None:
        item.future.set_exception(exception)
    else:
        item.future.set_result(result)
