"""Requests that arrive together go through the model together.

Each request puts its image and decoding settings on a queue and awaits a future. One worker takes
everything queued within a few milliseconds (up to `max_batch` images), groups it by decoding settings, runs
each group as one batch in a thread (the event loop keeps accepting requests meanwhile), and resolves the
futures. The model is only ever used by that one worker, so it needs no locking.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from PIL import Image

from captioner.api import Captioner, CaptionResult
from captioner.decoding.settings import DecodeSettings


@dataclass
class _Job:
    name: str
    image: Image.Image
    settings: DecodeSettings
    done: asyncio.Future


class CaptionBatcher:
    def __init__(self, captioner: Captioner, max_batch: int = 16, window_s: float = 0.005) -> None:
        self.captioner = captioner
        self.max_batch, self.window_s = max_batch, window_s
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task | None = None
        self.batches_run = 0  # how many model batches ran, and how many images they held (for /api/health)
        self.images_captioned = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass

    async def caption(self, name: str, image: Image.Image, settings: DecodeSettings) -> CaptionResult:
        if self.queue is None:
            await self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(name, image, settings, future))
        return await future

    async def _work(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            deadline = asyncio.get_running_loop().time() + self.window_s
            while len(jobs) < self.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            groups: dict[str, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(repr(job.settings), []).append(job)
            for group in groups.values():
                await self._run(group)

    async def _run(self, jobs: list[_Job]) -> None:
        items = [(job.name, job.image) for job in jobs]
        try:
            results = await asyncio.to_thread(self.captioner.caption_batch, items, jobs[0].settings)
        except Exception as error:  # a failure of the model fails these requests, not the server
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(error)
            return
        self.batches_run += 1
        self.images_captioned += len(jobs)
        for job, result in zip(jobs, results):
            if not job.done.done():  # the client may have gone away
                job.done.set_result(result)
