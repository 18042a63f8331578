"""Owners on other hosts: judged by their heartbeat in state/, taken over after peer_timeout_s."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.core.config import Settings
from daemon.spool import owner as owner_mod
from daemon.spool.claim import claim
from daemon.spool.layout import ensure_layout
from daemon.spool.peers import Heartbeat, Observations, Peers, heartbeat_path
from daemon.spool.recover import recover


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    s = make_settings(peer_timeout_s=10, heartbeat_interval_s=1)
    ensure_layout(s)
    return s


@pytest.fixture(autouse=True)
def _real_identity() -> Iterator[None]:
    yield
    owner_mod.pretend_host(None)


def _claim_as_remote(settings: Settings, name: str, *, beat: bool = True) -> tuple[Path, owner_mod.Owner]:
    """A job claimed by a daemon that looks like one on host node-b (and its heartbeat)."""
    owner_mod.pretend_host("node-b")
    try:
        (settings.inbox / name).write_text("prompt: a tune from another node\nduration: 0.5\n")
        claimed = claim(settings, settings.inbox / name)
        assert claimed is not None and claimed.owner is not None
        if beat:
            Heartbeat(settings, "node-b-1").beat()
        return claimed.work_path, claimed.owner
    finally:
        owner_mod.pretend_host(None)


class Clock:
    """The reader's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def observed(clock: Clock) -> Observations:
    return Observations(clock)


def _shift_heartbeat(settings: Settings, seconds: float, instance: str = "node-b-1") -> None:
    """Move the heartbeat's time stamp (the writer's clock) without any other change."""
    path = heartbeat_path(settings, instance)
    data = json.loads(path.read_text())
    data["heartbeat"] += seconds
    path.write_text(json.dumps(data))


def test_remote_claim_kept_while_its_heartbeat_changes_then_recovered(
    settings: Settings, clock: Clock, observed: Observations
) -> None:
    work, remote = _claim_as_remote(settings, "r1.yaml")
    assert remote.host == "node-b" and not owner_mod.is_local(remote, owner_mod.current_owner())
    assert recover(settings, observed=observed) == [] and work.exists()
    clock.t += 9
    assert recover(settings, observed=observed) == [] and work.exists()  # 9 s < peer_timeout_s
    _shift_heartbeat(settings, 9)  # it beat: the content changed, so it lives on
    assert recover(settings, observed=observed) == [] and work.exists()
    clock.t += 9
    assert recover(settings, observed=observed) == [] and work.exists()
    clock.t += 2  # unchanged for 11 s of the reader's clock
    (taken,) = recover(settings, observed=observed)
    assert taken.source_name == "r1.yaml" and not work.exists() and taken.work_path.exists()
    assert taken.owner == owner_mod.current_owner()


def test_heartbeat_stamped_in_the_future_dies_when_it_stops_changing(
    settings: Settings, clock: Clock, observed: Observations
) -> None:
    work, _ = _claim_as_remote(settings, "skew.yaml")
    _shift_heartbeat(settings, 86400)  # the dead peer's clock ran a day ahead
    assert recover(settings, observed=observed) == [] and work.exists()
    clock.t += 11
    (taken,) = recover(settings, observed=observed)
    assert taken.source_name == "skew.yaml"


def test_heartbeat_stamped_long_ago_lives_while_it_changes(
    settings: Settings, clock: Clock, observed: Observations
) -> None:
    work, _ = _claim_as_remote(settings, "behind.yaml")
    _shift_heartbeat(settings, -86400)  # a live peer whose clock runs a day behind
    for _ in range(5):
        assert recover(settings, observed=observed) == [] and work.exists()
        clock.t += 8
        _shift_heartbeat(settings, 8)


def test_peer_with_our_host_name_and_another_boot_id_lives_by_its_heartbeat(
    settings: Settings, clock: Clock, observed: Observations
) -> None:
    me = owner_mod.current_owner()
    owner_mod.pretend_host(me.host)  # a clone of this machine: same host name, its own boot id
    try:
        (settings.inbox / "twin.yaml").write_text("prompt: a tune from a clone\nduration: 0.5\n")
        claimed = claim(settings, settings.inbox / "twin.yaml")
        hb = Heartbeat(settings, "twin-1")
        hb.beat()
    finally:
        owner_mod.pretend_host(None)
    assert claimed is not None and claimed.owner is not None
    assert claimed.owner.host == me.host and claimed.owner.boot_id != me.boot_id
    for _ in range(4):
        assert recover(settings, observed=observed) == [] and claimed.work_path.exists()
        clock.t += 6
        owner_mod.pretend_host(me.host)
        hb.beat()
        owner_mod.pretend_host(None)
    assert recover(settings, observed=observed) == []  # the last beat, seen
    clock.t += 11  # the clone died (or this is an earlier boot of ours): taken over
    (taken,) = recover(settings, observed=observed)
    assert taken.source_name == "twin.yaml"


def test_stopped_heartbeat_frees_the_claims_at_once(settings: Settings, observed: Observations) -> None:
    work, _ = _claim_as_remote(settings, "r2.yaml")
    owner_mod.pretend_host("node-b")
    Heartbeat(settings, "node-b-1").stopped()
    owner_mod.pretend_host(None)
    (taken,) = recover(settings, observed=observed)
    assert taken.source_name == "r2.yaml"


def test_remote_owner_without_heartbeat_gets_the_timeout_from_first_sight(
    settings: Settings, clock: Clock, observed: Observations
) -> None:
    _, remote = _claim_as_remote(settings, "r3.yaml", beat=False)
    peers = Peers(settings, observed=observed)
    # The claim's own time stamp (the claimer's clock) does not count, only this reader's clock.
    assert peers.alive(remote, since=time.time() + 86400, claim="c1")
    clock.t += 9
    assert peers.alive(remote, since=time.time() - 11, claim="c1")
    clock.t += 2
    assert not peers.alive(remote, since=time.time() + 86400, claim="c1")
    # A one-shot reader (no observations) estimates from the time stamp.
    one_shot = Peers(settings)
    assert one_shot.alive(remote, since=time.time() - 1)
    assert not one_shot.alive(remote, since=time.time() - 11)


def test_local_owner_judged_by_proc_not_by_heartbeat(settings: Settings) -> None:
    me = owner_mod.current_owner()
    peers = Peers(settings)
    assert peers.heartbeats == [] and peers.alive(me, since=0)  # no heartbeat, long ago: still alive
    dead = owner_mod.Owner(
        host=me.host, pid=2**22 + 12345, start_ticks=None, boot_id=me.boot_id, pid_ns=me.pid_ns
    )
    assert not peers.alive(dead, since=time.time())


def test_long_unchanged_heartbeats_are_forgotten(
    settings: Settings, clock: Clock, observed: Observations
) -> None:
    _claim_as_remote(settings, "r4.yaml")
    _shift_heartbeat(settings, 86400 * 365)  # a year ahead: never "old" by its time stamp
    recover(settings, observed=observed)
    clock.t += 10 * 10 + 1
    recover(settings, observed=observed)
    assert not heartbeat_path(settings, "node-b-1").exists()
