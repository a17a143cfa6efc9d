"""Micro-batching for the HTTP app: requests that arrive together are answered by one call.

    batcher = MicroBatcher(rec.recommend_many, max_batch_size=64, max_wait_ms=0.0)
    answer = await batcher.submit(query)      # inside an endpoint, on the event loop

One inference thread runs the batches, so the event loop keeps reading, validating and answering
requests while the model works (torch releases the GIL in its kernels). A batch starts as soon
as that thread is free and takes every request queued by then, up to `max_batch_size`: while one
batch runs, the next fills up, so batches grow with the load and a lone request never waits.
`max_wait_ms` > 0 also holds a batch open that long for late arrivals.

`fn(items) -> results` must return one result per item, in order; a result that is an
exception is raised in that item's caller only (a bad request fails alone). An exception
raised by `fn` itself fails every request of that batch.

Ray Serve replicas batch with Ray's own `@serve.batch` instead (serving/ray_app.py); this is
the same idea for the single-process server, where Ray is not running.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class MicroBatcher:
    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch_size: int = 64,
                 max_wait_ms: float = 0.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._queue: collections.deque[tuple[Any, asyncio.Future]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # one thread: batches run one after the other, each using torch's intra-op threads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="unirec-batch")
        self.batches = 0        # counters for tests and /metadata-style introspection
        self.items = 0

    async def submit(self, item: Any) -> Any:
        """The result of `fn` for `item`, computed in a batch with whatever else is queued."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._run())
        assert self._arrived is not None      # made with the worker above
        fut = loop.create_future()
        self._queue.append((item, fut))
        self._arrived.set()
        result = await fut
        if isinstance(result, BaseException):
            raise result
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._arrived is not None
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if self.max_wait_s > 0 and len(self._queue) < self.max_batch_size:
                deadline = loop.time() + self.max_wait_s
                while len(self._queue) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), left)
                    except asyncio.TimeoutError:
                        break
            n = min(len(self._queue), self.max_batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]  # client gone
            if not live:
                continue
            self.batches += 1
            self.items += len(live)
            try:
                results = await loop.run_in_executor(self._pool, self.fn, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as e:  # noqa: BLE001 - handed to every caller of this batch
                results = [e] * len(live)
            for (_, fut), res in zip(live, results):
                if not fut.done():
                    fut.set_result(res)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
