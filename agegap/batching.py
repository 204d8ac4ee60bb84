"""One network call for the crops of many concurrent requests.

A Keras call's fixed cost dwarfs one small image, so requests queue their crops here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Signature of the function that scores a batch: (uint8 images, tta_flip) -> P(young).
BatchScorer = Callable[[np.ndarray, bool], np.ndarray]


@dataclass
class _Waiting:
    crops: np.ndarray
    tta_flip: bool
    result: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Gathers crops from concurrent callers and scores them together on one model thread.

    A batch closes when ``max_images`` crops are waiting, or ``max_wait_s`` after its
    first crop arrived, whichever comes first; crops asking for flip TTA and crops not
    asking for it are scored in separate calls of the same batch.
    """

    def __init__(self, score: BatchScorer, *, max_images: int, max_wait_s: float) -> None:
        self._score = score
        self._max_images = max_images
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the network already uses every core, and calls must not interleave.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agegap-model")
        self.calls = 0  # model calls made, for tests and the load benchmark

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="agegap-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._model_thread.shutdown(wait=True)

    async def probabilities(self, crops: np.ndarray, *, tta_flip: bool) -> np.ndarray:
        """P(young) of each crop, scored in whatever batch it lands in."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(crops) == 0:
            return np.zeros((0,), np.float64)
        waiting = _Waiting(crops, tta_flip, asyncio.get_running_loop().create_future())
        await self._queue.put(waiting)
        return await waiting.result

    async def _gather(self) -> list[_Waiting]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        count = len(batch[0].crops)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while count < self._max_images:
            try:
                waiting = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            batch.append(waiting)
            count += len(waiting.crops)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            for tta_flip in (False, True):
                group = [w for w in batch if w.tta_flip == tta_flip and not w.result.done()]
                if not group:
                    continue
                images = np.concatenate([w.crops for w in group])
                try:
                    scores = await loop.run_in_executor(
                        self._model_thread, self._score, images, tta_flip
                    )
                except Exception as error:  # every waiting request learns of it; none hangs
                    for waiting in group:
                        if not waiting.result.done():
                            waiting.result.set_exception(error)
                    continue
                self.calls += 1
                position = 0
                for waiting in group:
                    count = len(waiting.crops)
                    if not waiting.result.done():  # a caller that went away is skipped
                        waiting.result.set_result(scores[position : position + count])
                    position += count
