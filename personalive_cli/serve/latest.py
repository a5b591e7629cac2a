"""A small asyncio queue that keeps only the newest items: outputs waiting to be sent to a slow viewer
are dropped oldest first (and counted), so the send side cannot build up latency either."""

from __future__ import annotations

import asyncio
import collections


class LatestQueue:
    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self.dropped = 0
        self._items: collections.deque = collections.deque()
        self._ready = asyncio.Event()

    def put(self, item) -> None:
        """Add an item (call on the event loop's thread: ``loop.call_soon_threadsafe(q.put, item)``)."""
        self._items.append(item)
        while len(self._items) > self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._ready.set()

    async def get(self):
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
