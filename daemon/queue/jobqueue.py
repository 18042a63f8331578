"""The daemon's queue of claimed jobs: high before normal before low, first in first out within
a priority. Thread-safe: the pickup thread puts, the worker gets, `cancel` removes, `status`
snapshots.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

PRIORITIES = ("high", "normal", "low")


class Queueable(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def priority(self) -> str: ...


T = TypeVar("T", bound=Queueable)


@dataclass
class _Entry(Generic[T]):
    item: T
    seq: int
    enqueued_at: float


class QueueClosed(Exception):
    """put() after close(): the daemon is stopping."""


class JobQueue(Generic[T]):
    """Items need `job_id` and `priority` ("high" | "normal" | "low") attributes.

    `get(timeout)` returns None on timeout and, once `close()` was called and the queue is empty,
    at once. Several items may share a job id (before `spool.reserve_id` makes them unique);
    `remove` takes the oldest.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._lanes: dict[str, deque[_Entry[T]]] = {p: deque() for p in PRIORITIES}
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._clock = clock

    def put(self, item: T) -> None:
        lane = self._lane(item)
        with self._cond:
            if self._closed:
                raise QueueClosed("the queue is closed (daemon stopping)")
            self._seq += 1
            lane.append(_Entry(item, self._seq, self._clock()))
            self._cond.notify()

    def _lane(self, item: T) -> deque[_Entry[T]]:
        try:
            return self._lanes[item.priority]
        except KeyError:
            raise ValueError(
                f"priority must be one of {', '.join(PRIORITIES)}, not {item.priority!r}"
            ) from None

    def get(self, timeout: float | None = None) -> T | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for lane in self._lanes.values():
                    if lane:
                        return lane.popleft().item
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def remove(self, job_id: str) -> T | None:
        """Take the (oldest) queued item with this id out; None when it is not queued."""
        with self._cond:
            for lane in self._lanes.values():
                for entry in lane:
                    if entry.item.job_id == job_id:
                        lane.remove(entry)
                        return entry.item
        return None

    def take_compatible(self, predicate: Callable[[T], bool], limit: int) -> list[T]:
        """Take up to `limit` queued items for which `predicate` holds, in queue order (for
        batching jobs that share a model and a length with the one just taken)."""
        taken: list[T] = []
        if limit <= 0:
            return taken
        with self._cond:
            for lane in self._lanes.values():
                for entry in list(lane):
                    if len(taken) >= limit:
                        return taken
                    if predicate(entry.item):
                        lane.remove(entry)
                        taken.append(entry.item)
        return taken

    def snapshot(self) -> list[dict[str, Any]]:
        """Queue order: [{position, job_id, priority, enqueued_at}] (position 1 runs next)."""
        with self._cond:
            entries = [e for lane in self._lanes.values() for e in lane]
        return [
            {
                "position": i,
                "job_id": e.item.job_id,
                "priority": e.item.priority,
                "enqueued_at": e.enqueued_at,
            }
            for i, e in enumerate(entries, start=1)
        ]

    def items(self) -> list[T]:
        with self._cond:
            return [e.item for lane in self._lanes.values() for e in lane]

    def __contains__(self, job_id: object) -> bool:
        with self._cond:
            return any(e.item.job_id == job_id for lane in self._lanes.values() for e in lane)

    def __len__(self) -> int:
        with self._cond:
            return sum(len(lane) for lane in self._lanes.values())

    def close(self) -> None:
        """Refuse new items and wake every waiting `get` (items already queued stay gettable)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[T]:
        """Remove and return everything queued (on shutdown: their claims stay in work/)."""
        with self._cond:
            out = [e.item for lane in self._lanes.values() for e in lane]
            for lane in self._lanes.values():
                lane.clear()
            return out
