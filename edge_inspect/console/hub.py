"""Live events to every open browser, without ever waiting for one.

The feed thread publishes; each browser's event stream reads its own bounded queue on the server's event
loop. A browser that does not keep up (a frozen tab, a slow link) fills its queue and is dropped: its
stream ends, and the browser's EventSource reconnects and starts again from a fresh snapshot. So one slow
client costs at most its queue, never the feed's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from edge_inspect.logs import log_event

log = logging.getLogger(__name__)

QUEUE_EVENTS = 256


class Subscriber:
    def __init__(self, size: int) -> None:
        # None ends the stream (dropped or shutting down).
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=size)


class Hub:
    def __init__(self, queue_events: int = QUEUE_EVENTS) -> None:
        self._size = queue_events
        self._subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The newest event of each retained kind (camera tiles), sent first to every new subscriber.
        self._retained: dict[str, str] = {}
        self.dropped = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, kind: str, data: dict[str, Any], retain: bool = False) -> None:
        """From any thread. Serialised once here, fanned out on the event loop."""
        message = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, kind, message, retain)

    def subscribe(self) -> tuple[Subscriber, list[str]]:
        """On the event loop: a new subscriber and the retained events to send it first."""
        subscriber = Subscriber(self._size)
        self._subscribers.add(subscriber)
        return subscriber, list(self._retained.values())

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def close(self) -> None:
        for subscriber in list(self._subscribers):
            self._end(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _fan_out(self, kind: str, message: str, retain: bool) -> None:
        if retain:
            self._retained[kind] = message
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped += 1
                log_event(log, logging.WARNING, "console_client_dropped", queued=self._size)
                self._end(subscriber)

    def _end(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)
