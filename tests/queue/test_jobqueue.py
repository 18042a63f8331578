"""The job queue: priority lanes, FIFO inside each, removal for cancel, batching pulls, threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from daemon.queue.jobqueue import JobQueue, QueueClosed

pytestmark = pytest.mark.timeout(10)


@dataclass(frozen=True)
class J:
    job_id: str
    priority: str = "normal"
    model: str = "small"


def drain(q: JobQueue[J]) -> list[str]:
    out = []
    while (item := q.get(timeout=0)) is not None:
        out.append(item.job_id)
    return out


def test_fifo_within_priority_high_before_normal_before_low() -> None:
    q: JobQueue[J] = JobQueue()
    for job in [J("n1"), J("l1", "low"), J("h1", "high"), J("n2"), J("h2", "high"), J("l2", "low"), J("n3")]:
        q.put(job)
    assert len(q) == 7
    assert [e["job_id"] for e in q.snapshot()] == ["h1", "h2", "n1", "n2", "n3", "l1", "l2"]
    assert [e["position"] for e in q.snapshot()] == list(range(1, 8))
    assert drain(q) == ["h1", "h2", "n1", "n2", "n3", "l1", "l2"]
    assert len(q) == 0


def test_a_late_high_priority_job_overtakes_queued_normal_ones() -> None:
    q: JobQueue[J] = JobQueue()
    q.put(J("n1"))
    q.put(J("n2"))
    assert q.get().job_id == "n1"
    q.put(J("urgent", "high"))
    assert drain(q) == ["urgent", "n2"]


def test_remove_for_cancel() -> None:
    q: JobQueue[J] = JobQueue()
    for job in [J("a"), J("b", "high"), J("c"), J("a", "low")]:
        q.put(job)
    removed = q.remove("a")
    assert removed == J("a")  # the oldest of the two "a"
    assert q.remove("missing") is None
    assert "c" in q and "missing" not in q
    assert drain(q) == ["b", "c", "a"]


def test_take_compatible_pulls_matching_jobs_in_queue_order_up_to_the_limit() -> None:
    q: JobQueue[J] = JobQueue()
    jobs = [J("s1"), J("m1", model="medium"), J("s2", "low"), J("s3", "high"), J("s4"), J("s5")]
    for job in jobs:
        q.put(job)
    first = q.get()
    assert first.job_id == "s3"
    more = q.take_compatible(lambda j: j.model == first.model, limit=2)
    assert [j.job_id for j in more] == ["s1", "s4"]
    assert q.take_compatible(lambda j: True, limit=0) == []
    assert drain(q) == ["m1", "s5", "s2"]


def test_bad_priority_is_refused() -> None:
    q: JobQueue[J] = JobQueue()
    with pytest.raises(ValueError, match="priority"):
        q.put(J("x", "urgent"))
    assert len(q) == 0


def test_get_times_out_and_close_wakes_waiters() -> None:
    q: JobQueue[J] = JobQueue()
    t0 = time.monotonic()
    assert q.get(timeout=0.1) is None
    assert time.monotonic() - t0 >= 0.09
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(q.get()))
    waiter.start()
    time.sleep(0.05)
    q.close()
    waiter.join(2)
    assert not waiter.is_alive() and got == [None]
    with pytest.raises(QueueClosed):
        q.put(J("late"))


def test_drain_empties_the_queue() -> None:
    q: JobQueue[J] = JobQueue()
    q.put(J("a"))
    q.put(J("b", "high"))
    assert [j.job_id for j in q.drain()] == ["b", "a"]
    assert len(q) == 0


def test_many_producers_and_consumers_lose_and_duplicate_nothing() -> None:
    q: JobQueue[J] = JobQueue()
    got: list[str] = []
    lock = threading.Lock()
    prios = ("high", "normal", "low")

    def produce(p: int) -> None:
        for i in range(200):
            q.put(J(f"p{p}-{i}", prios[i % 3]))

    def consume() -> None:
        while (item := q.get(timeout=0.5)) is not None:
            with lock:
                got.append(item.job_id)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    threads += [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(got) == sorted(f"p{p}-{i}" for p in range(4) for i in range(200))
